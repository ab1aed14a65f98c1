"""Saga journals: where a coordinator writes every transition before acting on it.

* ``_records``: the records, kinds, phases, the :class:`~actors.Journal` protocol and the
  theory of operation of the saga state machine;
* ``_state``: the fold of a saga's events (:class:`~actors.SagaState`, :func:`~actors.saga_state`);
* ``_index``: the bookkeeping every journal shares (validation before a write is queued);
* ``_memory``: :class:`~actors.MemoryJournal`;
* ``_threaded``: the trio side every journal with a writer thread shares (staging, flushing,
  backpressure, lifecycle, failure);
* ``_fleet``: the protocol of a journal shared by several instances (ownership, leases);
* ``_sqlite``: :class:`~actors.SqliteJournal` (trio side, writer thread, file format, file);
* ``_postgres``: :class:`~actors.PostgresJournal` (API, request pipeline, writer, schema).
"""
