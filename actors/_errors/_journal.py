"""Fleet journal errors: a shared saga journal refused a write."""

from __future__ import annotations

from actors._errors._base import AuraError
from actors._errors._categories import ErrorCategory


class OwnershipLost(AuraError):
    """Another instance owns the saga now: this instance must stop driving it.

    A fleet journal (``PostgresJournal``) raises it from a write when the saga's row no longer
    names this instance and its fencing epoch: a survivor claimed the saga after this
    instance's lease expired (or the saga is unknown to the journal).  Nothing was written.
    Stop the saga at once and send nothing more for it: its new owner resumes it from the
    journal, re-sending the step in flight with the same idempotency key.

    Attributes:
        saga_id: the saga.
        owner: the instance that owns it now (``None`` if unknown).
        epoch: its fencing epoch now (``None`` if unknown).
    """

    default_category = ErrorCategory.INVALID_STATE

    def __init__(self, *, saga_id: str, owner: str | None = None, epoch: int | None = None) -> None:
        now = f" (now owned by instance {owner!r}, epoch {epoch})" if owner is not None else ""
        super().__init__(
            f"Saga {saga_id!r} is no longer owned by this instance{now}; nothing was written.",
            suggested_action=(
                "Stop driving the saga and send nothing more for it: its new owner resumes it "
                "from the journal. If this happens often, leases expire too soon: check the "
                "lease duration and the instance's pauses."
            ),
        )
        self.saga_id = saga_id
        self.owner = owner
        self.epoch = epoch


class JournalUnavailable(AuraError):
    """The journal's server cannot be reached (down, restarting, or not answering).

    A dependency failure: retrying after the server is back succeeds.  A write refused at once
    (the journal already knew the server was down) was not written.  A write that was queued
    before and did not commit within the journal's ``write_timeout`` is *in doubt*
    (``in_doubt``): it stays queued and lands when the server is back, unless the journal is
    closed first; until then nothing it announces may be acted on.

    Attributes:
        journal: where the journal is (a URL without its password, or a path).
        in_doubt: whether the write may still land.
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(self, message: str, *, journal: str = "", in_doubt: bool = False) -> None:
        super().__init__(
            message,
            suggested_action=(
                "Wait for the journal's server to be reachable again (the journal reconnects "
                "by itself), then retry; check the database server's health if it persists."
            ),
        )
        self.journal = journal
        self.in_doubt = in_doubt
