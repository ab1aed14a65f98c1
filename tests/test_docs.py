"""The documentation keeps its promises: every alert has a runbook entry its rule points to,
every runbook case is there, and every ``python`` block of the guides runs (the typing test
type-checks them with ``mypy --strict``, as it does the README's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from actors import AlertRule

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNBOOK = DOCS / "runbook.md"
RULES = ROOT / "monitoring" / "prometheus" / "aura-alerts.yml"


def guide_blocks() -> list[tuple[str, str]]:
    """Every ```python block of the docs (whole programs), named by file and position.
    Fragments are fenced ```py and are not collected."""
    blocks = []
    for path in sorted(DOCS.rglob("*.md")):
        found = re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)
        for i, block in enumerate(found):
            blocks.append((f"{path.relative_to(DOCS).with_suffix('')}_{i}", block))
    return blocks


def _slug(heading: str) -> str:
    """The anchor mkdocs (and the git hosts) give a heading: lower case, code marks and
    punctuation dropped, spaces as dashes."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", text)


def _anchors(text: str) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M)}


def _rules() -> dict[str, dict[str, str]]:
    """Each alerting rule's annotations, by alert name (read as text: no YAML parser needed)."""
    rules: dict[str, dict[str, str]] = {}
    current = None
    for line in RULES.read_text().splitlines():
        alert = re.match(r"^\s*- alert: (\w+)\s*$", line)
        if alert:
            current = alert.group(1)
            rules[current] = {}
        annotation = re.match(r'^\s+(runbook_url|summary): "(.*)"\s*$', line)
        if annotation and current:
            rules[current][annotation.group(1)] = annotation.group(2)
    return rules


def test_every_alert_has_a_runbook_entry_and_its_rule_points_to_it() -> None:
    """Each Prometheus alert has a heading of its own in the runbook, and its rule's
    ``runbook_url`` names that heading's anchor."""
    text = RUNBOOK.read_text()
    anchors = _anchors(text)
    rules = _rules()
    assert len(rules) >= 8, rules
    for name, notes in rules.items():
        assert f"### `{name}`" in text, f"no runbook entry for {name}"
        assert notes.get("runbook_url") == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in anchors, name


def test_every_monitor_alert_and_operator_case_is_in_the_runbook() -> None:
    """The monitor's own alert rules are named, and every case an operator meets has its
    section: what you see, what it means, what to do."""
    text = RUNBOOK.read_text()
    for rule in AlertRule:
        assert f"`{rule.value}`" in text, rule
    cases = [
        "A breaker stuck open",
        "The retry budget exhausted",
        "The bulkhead full",
        "A saga compensation_failed",
        "A journal locked, corrupt or unreachable",
        "A supervisor that gave up",
        "The fleet store down",
        "Tuning the defaults",
    ]
    sections = re.split(r"^## ", text, flags=re.M)
    titles = [section.splitlines()[0] for section in sections[1:]]
    for case in cases:
        assert case in titles, case
    for section in sections[1:]:
        if section.startswith("Tuning"):
            continue
        for part in ("**What you see.**", "**What it means.**", "**What to do.**"):
            assert part in section, (section.splitlines()[0], part)


def test_the_docs_links_to_runbook_anchors_resolve() -> None:
    """Links into the runbook from the guides and the runbook itself name existing anchors
    (``mkdocs build --strict`` checks this too, in CI)."""
    anchors = _anchors(RUNBOOK.read_text())
    for path in DOCS.rglob("*.md"):
        for anchor in re.findall(r"runbook\.md#([\w-]+)\)", path.read_text()):
            assert anchor in anchors, (path.name, anchor)
        if path == RUNBOOK:
            for anchor in re.findall(r"\]\(#([\w-]+)\)", path.read_text()):
                assert anchor in anchors, anchor


def test_the_guides_have_runnable_examples() -> None:
    """There is something to run: the guides' whole programs are collected."""
    names = {name.split("_")[0] for name, _ in guide_blocks()}
    assert {"guides/providers", "guides/supervision", "guides/sagas", "guides/chaos"} <= names


@pytest.mark.parametrize(("name", "block"), guide_blocks(), ids=[n for n, _ in guide_blocks()])
def test_every_docs_python_block_runs(name: str, block: str, tmp_path: Path) -> None:
    """Every ```python block of the docs runs to the end without an error, from outside the
    project (as a reader's copy would)."""
    script = tmp_path / "example.py"
    script.write_text(block)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, f"{name}:\n{result.stderr}"


# ------------------------------------------------------------ docstrings the reference can read

_SECTION = re.compile(r"^(\s*)(Args|Parameters|Raises|Returns|Yields):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_][\w.]*)( \([^)]*\))?:( |$)")


def _sections(doc: str) -> dict[str, list[str]]:
    """The entries of each Google-style section: the text before the first colon of every
    line one level in."""
    found: dict[str, list[str]] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        header = _SECTION.match(line)
        if not header:
            continue
        entries = found.setdefault(header.group(2), [])
        indent = None
        for entry in lines[i + 1 :]:
            if not entry.strip():
                break
            depth = len(entry) - len(entry.lstrip())
            if depth <= len(header.group(1)):
                break
            if indent is None:
                indent = depth
            if depth == indent:
                entries.append(entry.strip())
    return found


def _documented() -> list[tuple[str, object]]:
    import inspect

    import actors
    import actors.chaos
    import actors.testing
    import supervisors

    objects: list[tuple[str, object]] = []
    for module in (actors, actors.chaos, actors.testing, supervisors):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                objects.append((f"{module.__name__}.{name}", obj))
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if inspect.isfunction(member) and not attr.startswith("_"):
                        objects.append((f"{module.__name__}.{name}.{attr}", member))
    return objects


def _generated_init(cls: type) -> bool:
    """Whether attrs wrote the class's ``__init__`` (griffe sees no signature for it)."""
    code = getattr(vars(cls).get("__init__"), "__code__", None)
    return code is None or code.co_filename.startswith("<attrs generated")


def test_public_docstrings_are_ones_the_api_reference_can_read() -> None:
    """What ``mkdocs build --strict`` (CI) refuses, found by the suite too (griffe's warnings):
    an ``Args`` entry that is not one name (``a, b: ...``) or no parameter of the signature,
    ``Args`` on a class whose ``__init__`` attrs writes (its fields are ``Attributes``), and a
    ``Raises`` line that is not ``Error: description``."""
    import inspect

    import attrs

    problems = []
    for where, obj in _documented():
        doc = inspect.getdoc(obj) or ""
        sections = _sections(doc)
        args = sections.get("Args", []) + sections.get("Parameters", [])
        for entry in args:
            if not _ENTRY.match(entry):
                problems.append(f"{where}: Args entry is not one name: {entry[:60]!r}")
        for entry in sections.get("Raises", []):
            if ":" not in entry:  # griffe: "Failed to get 'exception: description' pair"
                problems.append(f"{where}: Raises entry without 'Error: description': {entry!r}")
        if not args:
            continue
        if inspect.isclass(obj) and attrs.has(obj) and _generated_init(obj):
            problems.append(f"{where}: an attrs class documents its fields as Attributes")
            continue
        target = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
        try:
            parameters = set(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            continue
        for entry in args:
            match = _ENTRY.match(entry)
            name = match.group(1).lstrip("*") if match else ""
            if match and name not in parameters:
                problems.append(f"{where}: Args names {name!r}, not a parameter")
    assert not problems, "\n".join(problems)
