"""The configuration schema: pure settings, checked when built, loaded from TOML, JSON or dicts.

* ``_schema``: :class:`~actors.ResilienceConfig`, :class:`~actors.ProviderSettings` and the
  loaders (:func:`~actors.load_config`, :func:`~actors.loads_config`);
* ``_monitoring``: :class:`~actors.MonitorSettings`;
* ``_chaos``: :class:`~actors.ChaosSettings` (the injectors that act on them are in the public
  module ``actors.chaos``, which uses trio).
"""
