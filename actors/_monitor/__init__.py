"""The monitor: outcome reports in; health, metrics, breakers and alerts out.

* ``_actor``: :class:`~actors.MonitorActor`, the trio shell, and its query messages;
* ``_state``: :class:`~actors.MonitorState`, the sans-I/O core: intake and alert rules;
* ``_queries``: the state's queries (health, breakers, metrics, errors, rates, statistics);
* ``_alerts``: the alert book (rules, hysteresis, acknowledgement);
* ``_windows``: the rolling windows and the latency histogram layout;
* ``_types``: the query results and the monitor's errors.

The reports it takes are shared types (``actors._protocol``); it imports no other built-in actor.
"""
