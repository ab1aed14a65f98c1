"""The operator surface: the admin HTTP API, Prometheus metrics, logging set-up, the ``aura``
command and its live view.  It sits on top: it imports the supervision engine and the built-in
actors, and nothing below imports it.

* ``_admin``: the admin API (its actor, settings, routes and request handling);
* ``_http``: the small bounded HTTP/1.1 server the admin API runs on (h11);
* ``_metrics``: the operator snapshot and the Prometheus exposition;
* ``_logging``: structured logging with correlation ids;
* ``_cli`` and ``_live``: the ``aura`` command and its live view.
"""
