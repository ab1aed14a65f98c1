"""The fleet layer: breaker state, idempotency and provider quotas shared through Redis.

General layout (private modules, one concept each; ``Fleet`` and ``open_fleet`` are public
through ``actors``, the settings live with the configuration schema in
``actors._policies._config._fleet``):

* ``_member``: :class:`Fleet`, this instance's member (what provider actors are given, and its
  background work), and :func:`open_fleet`;
* ``_client``: the trio side of coredis: deadlines, one error, scripts by SHA, pub/sub;
* ``_memory``: an in-memory store server for tests under ``MockClock``;
* ``_breaker_lua``, ``_breaker_store``: the shared breaker's scripts and stores;
* ``_breaker_view``: the cached view the provider's hot path reads (sans-I/O);
* ``_breakers``: the trio member that keeps the views fresh and sends changes;
* ``_idempotency_*``: the shared idempotency store (claims as fenced leases);
* ``_quota``: the shared rate limit, leased ahead of need in batches.
"""
