"""A griffe extension: the docstrings' reStructuredText roles, rendered for Markdown.

The code's docstrings name other objects the Sphinx way (``:class:`~actors.Journal```,
``:meth:`open```, ``Example::``).  This turns a role whose target is a public name of
``actors``, ``actors.chaos``, ``actors.testing`` or ``supervisors`` into a link to its
reference entry, and any other role into inline code, so the API reference reads as text and
``mkdocs build --strict`` never meets a cross-reference that does not resolve.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:class|meth|func|attr|exc|data|obj|mod|const|py:\w+):`(~?)([^`<]*?)(?:\s*<([^>]+)>)?`"
)
_LITERAL_BLOCK = re.compile(r"^(\s*)(Example|Examples|For example|Usage)::\s*$", re.MULTILINE)
_MODULES = ("actors", "actors.chaos", "actors.testing", "supervisors")


def _public() -> dict[str, str]:
    """Every public name, and its dotted form, to the anchor of its reference entry."""
    anchors: dict[str, str] = {}
    for name in reversed(_MODULES):  # the top-level packages win over their submodules
        module = importlib.import_module(name)
        for attr in module.__all__:
            anchors[f"{name}.{attr}"] = f"{name}.{attr}"
            anchors[attr] = f"{name}.{attr}"
    return anchors


class RstRoles(griffe.Extension):
    """Rewrites roles in every docstring before it is parsed."""

    def __init__(self) -> None:
        self._anchors = _public()

    def _replace(self, match: re.Match[str]) -> str:
        short, target, explicit = match.group(1), match.group(2).strip(), match.group(3)
        if explicit:
            text, target = target, explicit.strip()
        else:
            text = target.rsplit(".", 1)[-1] if short else target
        anchor = self._anchors.get(target)
        if anchor is None:
            return f"`{text}`"
        return f"[`{text}`][{anchor}]"

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None:
            return
        value = _ROLE.sub(self._replace, docstring.value)
        docstring.value = _LITERAL_BLOCK.sub(r"\1\2:", value)
