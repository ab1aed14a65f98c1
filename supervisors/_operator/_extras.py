"""Optional dependencies: say which extra to install instead of a bare ``ModuleNotFoundError``.

The basic install (``pip install aura-actors``) runs trees, providers, sagas and the monitor.
The operator surface needs more: the admin API h11, starlette and prometheus-client (the
``admin`` extra), the ``aura`` command's live view and ``aura status`` rich and httpx (the
``cli`` extra).  Each entry point checks what it needs before it starts (:func:`require`), so
the error names the extra and the command that installs it.
"""

from __future__ import annotations

import importlib.util
from typing import Final

__all__ = ["EXTRA_OF", "install_hint", "require"]

#: The extra that installs each optional module.
EXTRA_OF: Final = {
    "h11": "admin",
    "starlette": "admin",
    "prometheus_client": "admin",
    "rich": "cli",
    "httpx": "cli",
    "coredis": "fleet",
    "psycopg": "postgres",
}


def install_hint(module: str) -> str:
    """``"pip install 'aura-actors[extra]'"`` for an optional module (or the module itself)."""
    extra = EXTRA_OF.get(module.partition(".")[0])
    return f"pip install 'aura-actors[{extra}]'" if extra else f"pip install {module}"


def require(what: str, *modules: str) -> None:
    """Raise ``ModuleNotFoundError`` naming ``what``, the module and its extra, unless every
    module of ``modules`` can be imported."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            extra = EXTRA_OF.get(module, "")
            hint = install_hint(module)
            raise ModuleNotFoundError(
                f"{what} needs {module}, which the {extra!r} extra installs: {hint}", name=module
            )
