"""The PostgreSQL saga journal, shared by a fleet of instances.

``_journal`` is :class:`~actors.PostgresJournal` (its API, and the theory of operation);
``_pipeline`` the trio side of its requests; ``_writer`` the writer, watchdog and listener
threads; ``_schema`` the schema and its statements.
"""
