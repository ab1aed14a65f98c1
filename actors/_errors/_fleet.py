"""Fleet errors: the shared store of the fleet layer did not answer."""

from __future__ import annotations

from actors._errors._categories import ErrorCategory
from actors._errors._resilience import ResilienceError


class FleetStoreUnavailable(ResilienceError):
    """The fleet's shared store (Redis) did not answer an operation within its deadline.

    Raised by the fleet stores for every failure to reach or use the store: refused or lost
    connections, a deadline that passed, an error reply.  Transient (category ``DEPENDENCY``):
    the store's client reconnects by itself.  Provider calls never see it unless the provider's
    store-down policy is ``"reject"``; otherwise the local policies decide alone meanwhile.

    Attributes:
        operation: what was attempted (``"breaker.report"``, ``"idempotency.claim"``, ...).
        store: where the store is, as ``host:port`` (never the URL's credentials).
    """

    default_category = ErrorCategory.DEPENDENCY

    def __init__(self, *, operation: str, store: str = "", reason: str) -> None:
        where = f" at {store}" if store else ""
        super().__init__(
            f"The fleet store{where} is unavailable ({operation}): {reason}",
            suggested_action=(
                "Check that the store is running and reachable; the client reconnects by "
                "itself, and calls go on under local policies meanwhile unless configured "
                "to reject."
            ),
        )
        self.operation = operation
        self.store = store
        self.reason = reason
