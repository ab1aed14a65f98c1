"""Opening the SQLite journal's file safely, and translating the library's errors.

The file (and its ``-wal``, ``-shm`` and ``-journal`` companions) must be a regular file owned
by this user and not a link; a new file is created private (``O_EXCL``, mode 0600) without
following links.  A file that fails a check is never reset or overwritten.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from typing import Final

from actors._errors import ErrorCategory
from actors._saga._journals._records import JournalError
from actors._saga._journals._sqlite._schema import SCHEMA, _check_identity

_BUSY_TIMEOUT: Final = 2.0
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
#: ``PRAGMA synchronous`` levels as the connection reports them.
_SYNCHRONOUS_LEVELS: Final = {"NORMAL": 1, "FULL": 2}
#: Files SQLite keeps beside the journal (all are checked like the journal itself).
_COMPANIONS: Final = ("-wal", "-shm", "-journal")
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)


def _open(path: str, synchronous: str) -> sqlite3.Connection:
    """Open, check and (if new) initialise the journal file; runs on the writer thread."""
    fd = _open_private(path)
    try:
        known = os.fstat(fd)
        if known.st_size:
            head = os.pread(fd, 100, 0)
            if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
                raise JournalError(
                    f"The journal file {path} is not a SQLite database (or is truncated): "
                    "refusing to use or overwrite it.",
                    path=path,
                    category=ErrorCategory.CONFIGURATION,
                    suggested_action="Point the journal at its own file, or move this one away.",
                )
    finally:
        os.close(fd)
    conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT)
    try:
        # SQLite opened the path again: it must still be the file checked above (not a link
        # swapped in meanwhile).
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (known.st_dev, known.st_ino) or stat.S_ISLNK(now.st_mode):
            raise _unsafe(path, "was replaced while it was being opened")
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.executescript(SCHEMA)
        else:
            _check_identity(conn, path, app_id, version)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(
                f"The journal file {path} cannot use WAL mode (got {mode!r}).", path=path
            )
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        if level != _SYNCHRONOUS_LEVELS[synchronous]:  # never less durable than promised
            raise JournalError(
                f"The journal file {path} cannot be written at synchronous={synchronous} (the "
                f"connection runs at level {level}).",
                path=path,
                category=ErrorCategory.CONFIGURATION,
            )
        # Take the write lock now and keep it (locking_mode=EXCLUSIVE): one journal per file.
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def _unsafe(path: str, problem: str) -> JournalError:
    return JournalError(
        f"The journal path {path} {problem}: refusing to use it.",
        path=path,
        category=ErrorCategory.CONFIGURATION,
        suggested_action=(
            "Keep the journal in a directory only its user can write, as a regular file of "
            "that user (mode 0600)."
        ),
    )


def _check_existing(path: str, found: os.stat_result, what: str) -> None:
    """Refuse a journal file (or a companion of it) that someone else could have planted."""
    if stat.S_ISLNK(found.st_mode):
        raise _unsafe(path, f"is a symbolic link{what}")
    if stat.S_ISDIR(found.st_mode) and not what:
        raise JournalError(
            f"The journal path {path} is a directory, not a file.",
            path=path,
            category=ErrorCategory.CONFIGURATION,
        )
    if not stat.S_ISREG(found.st_mode):
        raise _unsafe(path, f"is not a regular file{what}")
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and found.st_uid != geteuid():
        raise _unsafe(path, f"is owned by user id {found.st_uid}, not by this process's user{what}")
    if found.st_mode & stat.S_IWOTH:
        raise _unsafe(path, f"is writable by other users (mode {found.st_mode & 0o777:o}){what}")


def _open_private(path: str) -> int:
    """A descriptor of the journal file, opened without following a symbolic link after the
    file and its companions (``-wal``, ``-shm``) passed :func:`_check_existing`; a missing file
    is created with mode 0600 (SQLite gives its companions the file's mode)."""
    for suffix in _COMPANIONS:
        try:
            found = os.lstat(path + suffix)
        except FileNotFoundError:
            continue
        _check_existing(path, found, f" (its {suffix} file)")
    existing: os.stat_result | None
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    try:
        if existing is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
            fd = os.open(path, flags, 0o600)
            os.fchmod(fd, 0o600)  # exactly, whatever the umask
            return fd
        _check_existing(path, existing, "")
        return os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link appeared after the check
            raise _unsafe(path, "is a symbolic link") from exc
        if exc.errno == errno.EEXIST:  # something appeared after the check
            raise _unsafe(path, "was created by someone else while it was being opened") from exc
        raise


def _translate(exc: BaseException, path: str) -> BaseException:
    """A library error as a JournalError naming the path (JournalErrors pass through)."""
    if isinstance(exc, JournalError) or not isinstance(exc, Exception):
        return exc
    text = str(exc)
    if "locked" in text:
        what = "is in use by another journal or process (it is locked)"
        category = ErrorCategory.INVALID_STATE
    elif "not a database" in text or "malformed" in text or "corrupt" in text:
        what = "is corrupt or not a SQLite database"
        category = ErrorCategory.INVALID_STATE
    elif "unable to open" in text or isinstance(exc, OSError):
        what = "cannot be opened or created (check the directory and permissions)"
        category = ErrorCategory.CONFIGURATION
    else:
        what = "could not be used"
        category = ErrorCategory.INVALID_STATE
    error = JournalError(
        f"The journal file {path} {what}: {type(exc).__name__}: {exc}",
        path=path,
        category=category,
    )
    error.__cause__ = exc
    return error


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass  # the journal already failed; the original error is what callers see
