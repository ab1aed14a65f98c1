"""The runtime core: actors, their slots, refs, replies and the runtime that runs them (trio).

General layout, each module building only on the ones after it (a circle between them exists
only for type checkers, under ``TYPE_CHECKING``):

* ``_runtime``: :func:`~actors.open_actor` and the runtime a tree runs on;
* ``_actor``: the :class:`~actors.Actor` base class users subclass;
* ``_ref``: :class:`~actors.ActorRef`, the handle callers send through;
* ``_cell``: the slot an actor lives in across restarts (mailbox, incarnations, statistics);
* ``_reply``: the one-shot reply slot an ask waits on, and its timers;
* ``_correlation``: the correlation ids carried with a message (for logs).

The core depends on the error vocabulary only; it knows nothing of policies or built-in actors.
"""
