"""Sagas: the coordinator actor, saga definitions, its messages and the saga journals.

* ``_coordinator``: :class:`~actors.SagaCoordinator`'s shell (recovery, admission, workers,
  queries) and the theory of operation;
* ``_driver``: driving a saga forward and compensating it;
* ``_ending``: a saga's end: the caller's answer, the error, the monitor's report;
* ``_fleet``: with a journal a fleet shares: pausing through outages, stopping on a lost
  saga, taking over orphans, starting an id run elsewhere, the journal's health;
* ``_run``: one saga's records and the coordinator's fields;
* ``_definition``: :class:`~actors.SagaDefinition`, steps, step contexts and errors;
* ``_messages``: the coordinator's messages, results, audit trail and statistics;
* ``_journals``: the journal protocol and its memory, SQLite and PostgreSQL journals.

A step's target is reached through its ref or path; a target that takes provider calls is known
by the :class:`~actors._protocol.CallReceiver` marker, so the coordinator never imports the
provider.
"""
