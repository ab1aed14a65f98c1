"""The SQLite saga journal: one file, one writer thread, group commit.

``_journal`` is :class:`~actors.SqliteJournal` (the trio side, and the theory of operation);
``_writer`` the writer thread; ``_schema`` the file format and the thread-side reads; ``_file``
the safe opening of the file and the translation of the library's errors.
"""
