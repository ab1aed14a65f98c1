"""Public names show the module users import them from: ``actors.ActorCrashed``, as trio does.

Implementation classes and functions live in private modules (``actors._errors._runtime``); each
public package re-exports its names and then calls :func:`fixup_module_metadata`, so reprs,
tracebacks, pickles and documentation name the public module.  A pickle names the class by
``__module__`` and ``__qualname__``, so it stays loadable for as long as the name is public,
whatever private module the class moves to.

One thing must happen first.  With ``from __future__ import annotations`` a class's annotations
are strings, and the tools that resolve them (msgspec's decoders, ``typing.get_type_hints``)
look the names up in ``sys.modules[cls.__module__]``: after the fix-up that would be the public
package, which holds none of the private helpers the annotations name.  So each string
annotation is resolved first, in the module that defines the class, exactly as those tools
would; one that cannot be resolved yet is left as it was (resolving it later fails as before).
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["fixup_module_metadata"]


def fixup_module_metadata(
    module_name: str, namespace: Mapping[str, object], names: Iterable[str]
) -> None:
    """Make the classes and functions ``names`` of ``namespace`` show ``module_name`` as their
    module, with the methods of those classes; only objects defined in a private module below
    ``module_name`` (``module_name._...``) are changed, so a name re-exported from another
    public package keeps its own."""
    prefix = module_name + "._"
    seen: set[int] = set()

    def fix(obj: type | types.FunctionType) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = obj.__module__
        if not (isinstance(module, str) and module.startswith(prefix)):
            return
        if isinstance(obj, type):
            _resolve_annotations(obj, module)
            for member in list(vars(obj).values()):
                for function in _functions(member):
                    fix(function)
        obj.__module__ = module_name

    for name in names:
        obj = namespace[name]
        if isinstance(obj, type | types.FunctionType):
            fix(obj)


def _functions(member: object) -> Iterator[types.FunctionType]:
    """The plain functions behind a class member: a method, a static or class method, or the
    accessors of a property."""
    if isinstance(member, staticmethod | classmethod):
        member = member.__func__
    if isinstance(member, property):
        candidates: tuple[object, ...] = (member.fget, member.fset, member.fdel)
    else:
        candidates = (member,)
    for candidate in candidates:
        if isinstance(candidate, types.FunctionType):
            yield candidate


def _resolve_annotations(cls: type, module: str) -> None:
    """Replace ``cls``'s string annotations by what they name in ``module`` (in place)."""
    # The class's own mapping, updated in place (inspect.get_annotations returns a copy).
    annotations = cls.__dict__.get("__annotations__")  # noqa: RUF063
    if not isinstance(annotations, dict):
        return
    pending = {key: value for key, value in annotations.items() if isinstance(value, str)}
    if not pending:
        return
    module_globals = vars(sys.modules[module])
    names = {key: value for key, value in vars(cls).items() if not key.startswith("__")}
    class_names = dict(names)  # eval adds __builtins__ to its globals
    for key, value in pending.items():
        try:
            # The module's names first, then the class's, as typing.get_type_hints and msgspec
            # look them up for a class.
            resolved = eval(value, class_names, module_globals)
            if _has_forward_reference(resolved):
                # A name inside is still text (a string alias such as ``AnySpec``): let
                # typing.get_type_hints resolve it all, on a stand-in class of the same module
                # with the class's names, so names are looked up exactly as for the class.
                stand_in = type(
                    cls.__name__,
                    (),
                    {**names, "__module__": module, "__annotations__": {key: value}},
                )
                resolved = typing.get_type_hints(stand_in, include_extras=True)[key]
        except Exception:
            continue  # not resolvable yet: left as it was, it fails later as it did before
        annotations[key] = resolved


def _has_forward_reference(annotation: object) -> bool:
    """Whether a name in ``annotation`` is still text (a string or a ForwardRef)."""
    if isinstance(annotation, str | typing.ForwardRef):
        return True
    return any(_has_forward_reference(arg) for arg in typing.get_args(annotation))
