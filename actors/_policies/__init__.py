"""The sans-I/O resilience policies and the configuration schema: no trio, not even indirectly.

Every policy is a plain state machine that takes the caller's ``now`` and never sleeps, so it
is tested without an event loop and used by the trio shells above it (the provider actor).  One
module per policy, each with its settings beside it:

* ``_breaker`` (circuit breaker), ``_backoff`` and ``_retry`` (when to try again), ``_budget``
  (retry budget), ``_bulkhead``, ``_ratelimit`` (token bucket), ``_idempotency`` (the table of
  calls by key), ``_classify`` (failures into the ten categories), ``_redact`` (secrets out of
  messages);
* ``_config``: the configuration schema (:class:`~actors.ResilienceConfig` and every settings
  record, including the monitor's thresholds and the chaos settings) and its loaders.

These import only the error vocabulary (``actors._errors``); import-linter checks it.
"""
