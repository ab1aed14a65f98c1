"""Types are API: typed refs, the README's python blocks under ``mypy --strict``, and an install
that type checkers and IDEs can follow.

mypy runs once for the whole module (one process, one cache): every snippet is a module of its
own in a temporary directory *outside* the project, so the packages are found the way a user's
code finds them (through the installed distribution), never through the checkout's directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing

from actors import Actor, MonitorActor, ProviderActor
from supervisors import ChildSpec, open_supervisor

ROOT = Path(__file__).resolve().parent.parent

TYPED_REFS = """
    from typing import Any

    import trio
    from actors import Actor, MonitorActor, Provider, ProviderActor
    from supervisors import ChildSpec, open_providers, open_supervisor, resilient


    class Greeter(Actor[str, str]):
        async def handle(self, name: str) -> str:
            return f"hello {name}"


    async def complete(prompt: str) -> str:
        return prompt


    async def main() -> None:
        tree = [
            ChildSpec("greeter", Greeter),
            ChildSpec("openai", lambda: ProviderActor("openai", complete)),
        ]
        async with open_supervisor(tree) as root:
            greeter = root.ref("greeter", Greeter)
            reveal_type(greeter)
            reply = await greeter.ask("ada")
            reveal_type(reply)
            openai = root.ref("openai", ProviderActor)
            reveal_type(openai)
            client = Provider(openai)
            reveal_type(client)
            typed: Provider[str, str] = Provider(openai)
            text = await typed.call("hi")
            reveal_type(text)
            added = await root.start_child(ChildSpec("other", Greeter))
            reveal_type(added)


    @resilient("openai")
    async def summarise(text: str, *, words: int = 50) -> str:
        return text[:words]


    async def entry() -> None:
        async with open_providers():
            summary = await summarise("a long text", words=3)
            reveal_type(summary)


    trio.run(main)
"""

WRONG = """
    import trio
    from actors import Actor
    from supervisors import open_supervisor, resilient


    class Greeter(Actor[str, str]):
        async def handle(self, name: str) -> str:
            return f"hello {name}"


    async def main() -> None:
        async with open_supervisor([]) as root:
            greeter = root.ref("greeter", Greeter)
            count: int = await greeter.ask("ada")
            await greeter.ask(42)


    @resilient("openai")
    async def summarise(text: str) -> str:
        return text


    async def entry() -> None:
        await summarise(42)
"""


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _docs_blocks() -> dict[str, str]:
    """The ```python blocks of the docs site's pages (``py`` fences are fragments), by a
    module name made of the page and the block's position."""
    blocks = {}
    for path in sorted((ROOT / "docs").rglob("*.md")):
        found = re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)
        for i, block in enumerate(found):
            blocks[f"docs_{path.stem}_{i}"] = block
    return blocks


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``mypy --strict`` of every snippet: the output lines of each file, by module name."""
    where = tmp_path_factory.mktemp("typing")
    files = {"typed_refs": TYPED_REFS, "wrong": WRONG}
    for i, block in enumerate(_readme_blocks()):
        files[f"readme_{i}"] = block
    files.update(_docs_blocks())
    for name, text in files.items():
        (where / f"{name}.py").write_text(textwrap.dedent(text))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(where / ".mypy_cache"),
            *sorted(f"{name}.py" for name in files),
        ],
        capture_output=True,
        text=True,
        cwd=where,  # outside the project: the packages must come from the installation
        timeout=600,
    )
    assert "Cannot find implementation or library stub" not in result.stdout, result.stdout
    lines: dict[str, str] = {name: "" for name in files}
    for line in result.stdout.splitlines():
        module = line.partition(".py:")[0]
        if module in lines:
            lines[module] += line + "\n"
    return lines


def test_the_packages_are_found_by_mypy_from_outside_the_project(
    mypy_output: dict[str, str],
) -> None:
    """The installed packages (an editable install included) are found with their types
    (``py.typed``) from any directory: the fixture asserts that no import is missing."""
    assert "import-not-found" not in "".join(mypy_output.values())


def test_typed_refs_carry_the_actors_message_and_reply_types(mypy_output: dict[str, str]) -> None:
    """``root.ref(path, Greeter)`` is an ``ActorRef[str, str]``; a provider's ref is typed by its
    messages; ``Provider(ref)`` needs no annotation; ``start_child`` keeps the spec's types."""
    out = mypy_output["typed_refs"]
    # Module prefixes dropped: they name private modules that may move.
    revealed = [
        re.sub(r"[\w.]+\.(\w+)", r"\1", t) for t in re.findall(r'Revealed type is "(.*)"', out)
    ]
    assert revealed == [
        "ActorRef[str, str]",
        "str",
        "ActorRef[Call | Isolate | Reset | GetStatus, Any]",
        "Provider[Any, Any]",
        "str",
        "ActorRef[str, str]",
        "str",
    ], out
    assert "error" not in out, out


def test_a_typed_ref_catches_wrong_messages_and_replies(mypy_output: dict[str, str]) -> None:
    out = mypy_output["wrong"]
    assert 'Incompatible types in assignment (expression has type "str"' in out, out
    assert 'Argument 1 to "ask" of "ActorRef" has incompatible type "int"' in out, out
    assert 'Argument 1 to "__call__" of "Resilient" has incompatible type "int"' in out, out


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_every_readme_python_block_passes_mypy_strict(
    mypy_output: dict[str, str], index: int
) -> None:
    """Every ```python block of the README type-checks under ``mypy --strict`` as it is written
    (another test runs each of them)."""
    assert mypy_output[f"readme_{index}"] == ""


@pytest.mark.parametrize("name", sorted(_docs_blocks()))
def test_every_docs_python_block_passes_mypy_strict(mypy_output: dict[str, str], name: str) -> None:
    """Every ```python block of the docs site's guides type-checks under ``mypy --strict``
    (tests/test_docs.py runs each of them)."""
    assert mypy_output[name] == ""


async def test_a_typed_lookup_checks_the_actor_running_there(
    mock_clock: trio.testing.MockClock,
) -> None:
    class Greeter(Actor[str, str]):
        async def handle(self, name: str) -> str:
            return name

    async with open_supervisor(
        [ChildSpec("greeter", Greeter), ChildSpec("monitor", MonitorActor)]
    ) as root:
        assert await root.ref("greeter", Greeter).ask("x") == "x"
        with pytest.raises(TypeError, match="is a MonitorActor, not a ProviderActor"):
            root.ref("monitor", ProviderActor)
