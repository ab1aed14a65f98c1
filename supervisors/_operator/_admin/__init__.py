"""The admin HTTP API (see the theory of operation in ``_actor``).

``_actor``: :class:`~supervisors.AdminActor`, :func:`~supervisors.admin_spec` and the tree
snapshot; ``_settings``: :class:`~supervisors.AdminSettings`; ``_routes``: the app and its
endpoints; ``_requests``: the error shape, the backend, request parsing and the token check.
"""
