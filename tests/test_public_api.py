"""The public surface: every exported name exists, is documented, and the README runs."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import actors
import supervisors

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("package", [actors, supervisors])
def test_all_is_sorted_and_importable(package: object) -> None:
    """__all__ is sorted and every name in it is importable."""
    names = package.__all__  # type: ignore[attr-defined]
    assert names == sorted(names)
    for name in names:
        assert hasattr(package, name), name


@pytest.mark.parametrize("package", [actors, supervisors])
def test_public_names_are_documented(package: object) -> None:
    """Every public class and function has a docstring; public methods too."""
    missing = []
    for name in package.__all__:  # type: ignore[attr-defined]
        obj = getattr(package, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                if not inspect.getdoc(member):
                    missing.append(f"{name}.{attr}")
    assert not missing, f"undocumented: {missing}"


def test_private_modules_are_private() -> None:
    """Implementation modules start with an underscore."""
    for package in ("actors", "supervisors"):
        for path in (ROOT / package).glob("*.py"):
            assert (
                path.name == "__init__.py"
                or path.name.startswith("_")
                or path.stem
                in {
                    "chaos",
                }
            ), path


def test_readme_starts_with_the_two_commands() -> None:
    """The README opens with the example command and the test command."""
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "-m examples.video_pipeline" in first_block
    assert "-m pytest" in first_block


def test_readme_python_examples_run(tmp_path: Path) -> None:
    """Every ```python block of the README runs without error."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for i, block in enumerate(blocks):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(block)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert result.returncode == 0, result.stderr
