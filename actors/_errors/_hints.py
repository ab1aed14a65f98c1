"""Helpful refusals: the choices a name had, the one probably meant, what a path is made of.

Every error about a name the user typed (a restart type, a strategy, a configuration value, a
child's path, a saga target, a provider section) is built with these, so the message always
says what would have been accepted and, when one is close, which one was probably meant.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Collection, Iterable
from typing import TypeVar

__all__ = ["ConfigWarning", "choice", "closest", "did_you_mean", "path_hint"]

E = TypeVar("E", bound=enum.Enum)


class ConfigWarning(UserWarning):
    """A configuration that is valid but probably not what was meant (a provider section or a
    fallback whose name is one letter away from another's)."""


def _normal(text: str) -> str:
    return text.lower().replace("-", "_").replace(" ", "_")


def closest(value: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """The choices closest to ``value`` (case, ``-`` and ``_`` aside), best first."""
    by_normal: dict[str, str] = {}
    for option in choices:
        by_normal.setdefault(_normal(option), option)
    found = difflib.get_close_matches(_normal(value), list(by_normal), n=n, cutoff=0.6)
    return [by_normal[f] for f in found]


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``value``, or ``""``."""
    found = closest(value, choices)
    return f" (did you mean {found[0]!r}?)" if found else ""


def choice(kind: type[E], value: object, what: str) -> E:
    """``value`` as a member of ``kind`` (the member, or its value); otherwise a ValueError
    listing every value and the closest one.  Usable as an attrs converter."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        pass
    names = [str(member.value) for member in kind]
    hint = did_you_mean(str(value), names) if isinstance(value, str) else ""
    raise ValueError(
        f"{what} must be one of {', '.join(repr(n) for n in names)}, got {value!r}{hint}"
    )


def path_hint(path: str, known: Collection[str]) -> str:
    """What to say about a ``path`` that names nothing among the ``known`` paths.

    A path that starts with a name no top-level path has, and whose rest is known, most likely
    starts with the root's name: the hint says paths start below the root.  Otherwise the
    closest known paths are suggested.
    """
    first, sep, rest = path.partition("/")
    tops = {p.partition("/")[0] for p in known}
    if sep and first not in tops and rest in known:
        return f" (the root's name is not part of paths: use {rest!r})"
    found = closest(path, [p for p in known if p], n=1)
    if found:
        return f" (did you mean {found[0]!r}?)"
    last = path.rpartition("/")[2]
    by_name = [p for p in known if p.rpartition("/")[2] == last]
    if by_name:
        return f" (an actor of that name is at {by_name[0]!r})"
    return ""
