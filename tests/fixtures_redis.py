"""Fixtures for tests against a real Redis server (started by the suite when no URL is given).

Every name in ``__all__`` is imported into tests/conftest.py.
"""

from __future__ import annotations

__all__: list[str] = []
