"""The root of the hierarchy, :class:`AuraError`, and the caller's errors: the request itself is
wrong and will fail again unchanged (:class:`IdempotencyConflict`, :class:`ConfigError`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from actors._errors._categories import ErrorCategory


class AuraError(Exception):
    """Base class of every error aura-actors raises.

    Attributes:
        category: the :class:`ErrorCategory` of the failure.
        message: what happened, for a person.
        suggested_action: what to do about it.

    ``str(error)`` is the message; :meth:`describe` adds the category and the action.
    """

    #: The category of every instance of this class, unless the constructor is given one.
    default_category: ClassVar[ErrorCategory] = ErrorCategory.UNKNOWN

    category: ErrorCategory
    message: str
    suggested_action: str

    def __init__(
        self,
        message: str,
        *,
        category: ErrorCategory | None = None,
        suggested_action: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = self.default_category if category is None else category
        self.suggested_action = (
            self.category.info.suggested_action if suggested_action is None else suggested_action
        )

    @property
    def transient(self) -> bool:
        """Whether retrying may succeed (from the category's defaults)."""
        return self.category.transient

    def describe(self) -> str:
        """One line for a person: category, message and suggested action."""
        return f"[{self.category.value}] {self.message} Suggested action: {self.suggested_action}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle by args; ours take keyword-only data, so rebuild from __dict__.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[AuraError], state: dict[str, Any]) -> AuraError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


# ----------------------------------------------------------------------------- caller errors


class IdempotencyConflict(AuraError, ValueError):
    """The idempotency key was used before with a different request.

    Attributes:
        key: the idempotency key.
    """

    default_category = ErrorCategory.VALIDATION

    def __init__(self, *, key: str) -> None:
        super().__init__(
            f"Idempotency key {key!r} was already used for a different request.",
            suggested_action=(
                "Use a fresh key for a new request, or send exactly the same request again."
            ),
        )
        self.key = key


class ConfigError(AuraError, ValueError):
    """Configuration is invalid.

    Attributes:
        path: where the problem is, as a dotted path
            (``"providers.openai.retry.max_attempts"``), or ``""`` for the whole document.
        source: the file the configuration came from, when known.
    """

    default_category = ErrorCategory.CONFIGURATION

    def __init__(self, problem: str, *, path: str = "", source: str | None = None) -> None:
        where = f" at `{path}`" if path else ""
        origin = f" in {source}" if source else ""
        super().__init__(
            f"Invalid configuration{origin}{where}: {problem}",
            suggested_action="Fix the named setting and load the configuration again.",
        )
        self.problem = problem
        self.path = path
        self.source = source


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters; never raises (a value
    whose ``repr`` fails is named by its type)."""
    try:
        text = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
