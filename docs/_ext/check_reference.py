"""Check a built site's API reference: every public name has its entry.

``python docs/_ext/check_reference.py SITE_DIR`` exits 1 naming each name of ``__all__`` (of
``actors``, ``actors.chaos``, ``actors.testing`` and ``supervisors``) that its reference page
does not show.  mkdocstrings leaves out, without a warning, a name it finds no docstring for
(a constant documented by a comment), so ``mkdocs build --strict`` alone would not notice.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

PAGES = {
    "actors": "reference/actors/index.html",
    "actors.chaos": "reference/chaos/index.html",
    "actors.testing": "reference/testing/index.html",
    "supervisors": "reference/supervisors/index.html",
}


def missing(site: Path) -> list[str]:
    """The public names without an entry in the built reference."""
    absent = []
    for module_name, page in PAGES.items():
        module = importlib.import_module(module_name)
        ids = set(re.findall(r'id="([\w.]+)"', (site / page).read_text()))
        absent += [
            f"{module_name}.{name}" for name in module.__all__ if f"{module_name}.{name}" not in ids
        ]
    return absent


if __name__ == "__main__":
    names = missing(Path(sys.argv[1]))
    if names:
        print("the API reference has no entry for:", ", ".join(names), file=sys.stderr)
        sys.exit(1)
    print(f"the API reference has an entry for every public name ({len(PAGES)} modules)")
