"""The one-line entry point: ``@resilient("openai")`` and ``async with open_providers()``.

Theory of operation
-------------------
Most applications want one thing: every call to an external service goes through that
service's circuit breaker, retries, retry budget, bulkhead and idempotency table, with a
monitor watching.  The full API builds that as a supervision tree (a :class:`MonitorActor`,
one :class:`ProviderActor` per service, the :class:`Provider` client); this module builds the
same tree for you.

:func:`open_providers` runs, for the duration of an ``async with`` inside a trio app, a tree
of a monitor and a ``providers`` supervisor with one provider actor per provider named in the
configuration (the built-in ``ResilienceConfig.default()`` when none is given: openai,
anthropic and ollama).  It yields a :class:`Providers` handle and makes it current for the
block (a context variable, which trio tasks started in the block inherit).

:func:`resilient` turns an async function into a :class:`Resilient` one: calling it sends the
call to the current block's provider actor of its name, which runs the function there under
the provider's policies and answers with its result or a typed error (``RetriesExhausted``,
``CircuitOpen``, ...; see the README's error table).  A provider that the configuration does not
name is started with the configuration's defaults the first time a function calls it (once,
however many callers race).  Each provider actor runs every function decorated with its name:
they share the service's breaker, budget and bulkhead, as calls to one service should.

The call is sent as the payload ``(function id, args, kwargs)``: with a ``key``, the provider
fingerprints that payload, so the same key with other arguments is an ``IdempotencyConflict``
(the arguments must then be msgspec-encodable: plain data, Structs, dataclasses).

Fallbacks are declared on the function (``fallback=`` another async function taking the same
arguments, decorated or not: ``@resilient("ollama")`` runs it under ollama's policies); it is
called in the caller's task when the call failed for good (not for a validation error, nor
when the call's time is up).  A ``fallback`` between providers in the configuration has no
meaning here (the other provider would run the same function) and is not used.

A configuration with a ``[fleet]`` section runs the providers as one instance of a fleet:
:func:`open_providers` opens the fleet member (:func:`~actors.open_fleet`) around the tree and
gives it to every provider actor, so they share what their ``fleet`` tables say with the other
instances (see the README's "Running a fleet").

Cancellation and errors behave as for :meth:`Provider.call`: the caller's trio deadline and
the call's ``timeout`` bound it, a caller that gives up cancels the attempt unless another
caller with the same key waits for it, and nothing is retried after the caller's deadline.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, TypeVar, final, overload

import msgspec
import trio

from actors._errors import AskTimeout, AuraError, ErrorCategory, did_you_mean
from actors._fleet._member import open_fleet
from actors._monitor._actor import MonitorActor
from actors._policies._config._schema import ResilienceConfig, load_config
from actors._policies._logs import library_logger
from actors._protocol import FleetMember
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from supervisors._errors import NoSuchChild
from supervisors._spec import ChildSpec, SupervisorSpec
from supervisors._tree import Supervisor, open_supervisor

__all__ = ["Providers", "Resilient", "open_providers", "resilient"]

P = ParamSpec("P")
R = TypeVar("R")

log = library_logger("supervisors.providers")

_CURRENT: ContextVar[Providers | None] = ContextVar("aura_providers", default=None)
_IDS = itertools.count(1)

#: The path of the supervisor of the provider actors, below the root of ``open_providers``.
PROVIDERS: str = "providers"
#: The path of the monitor, below the root of ``open_providers``.
MONITOR: str = "monitor"


@final
class Providers:
    """The running providers of an :func:`open_providers` block.

    ``await providers.get("openai")`` is the :class:`~actors.Provider` client of a provider
    (started with the configuration's defaults if the configuration does not name it);
    :attr:`root` is the tree, for everything the full API offers (``root.snapshot()``, the
    monitor's queries at ``root.ref("monitor")``, the admin API as a child).
    """

    __slots__ = ("_clients", "_config", "_fleet", "_functions", "_locks", "_root")

    def __init__(self, config: ResilienceConfig, fleet: FleetMember | None = None) -> None:
        self._config = config
        self._fleet = fleet
        self._root: Supervisor | None = None
        self._clients: dict[str, Provider[Any, Any]] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._functions: dict[str, Resilient[Any, Any]] = {}

    @property
    def config(self) -> ResilienceConfig:
        """The configuration the providers were started with."""
        return self._config

    @property
    def root(self) -> Supervisor:
        """The root of the tree: ``monitor`` and the ``providers`` supervisor below it."""
        if self._root is None:
            raise RuntimeError("the providers are not running (outside their `async with`)")
        return self._root

    @property
    def names(self) -> list[str]:
        """The providers running now, in the order they were started."""
        node = self.root.snapshot().find(PROVIDERS)
        return [] if node is None else [child.name for child in node.children]

    async def get(self, name: str) -> Provider[Any, Any]:
        """The client of provider ``name``, started now (with the defaults) if needed.

        Raises:
            ValueError: ``name`` is not a usable provider name.
            ChildStartFailed: the provider could not start.
        """
        client = self._clients.get(name)
        if client is not None:
            return client
        lock = self._locks.setdefault(name, trio.Lock())
        async with lock:
            client = self._clients.get(name)
            if client is None:
                client = await self._start(name)
        return client

    async def _start(self, name: str) -> Provider[Any, Any]:
        root = self.root
        try:
            ref = root.ref(f"{PROVIDERS}/{name}", ProviderActor)
        except NoSuchChild:
            known = list(self._config.providers)
            log.info(
                "starting provider %r with the default settings (not in the configuration%s)",
                name,
                did_you_mean(name, known) if known else "",
            )
            supervisor = root.supervisor(PROVIDERS)
            ref = await supervisor.start_child(self._spec(name))
        client: Provider[Any, Any] = Provider(ref)
        self._clients[name] = client
        return client

    def _spec(self, name: str) -> ChildSpec[Any, Any]:
        # A fallback between providers would run the same function again: not used here.
        settings = msgspec.structs.replace(self._config.for_provider(name), fallback=None)
        dispatch = functools.partial(_dispatch, self)

        def make() -> ProviderActor:
            return ProviderActor(name, dispatch, settings, monitor=MONITOR, fleet=self._fleet)

        return ChildSpec(name, make, shutdown=settings.retry.attempt_timeout)

    def __repr__(self) -> str:
        return f"<Providers {sorted(self._clients) or list(self._config.providers)}>"


_Payload = tuple[str, tuple[Any, ...], dict[str, Any]]


async def _dispatch(providers: Providers, payload: _Payload) -> Any:
    """The function of every provider actor of ``open_providers``: run the decorated function
    the call was made with."""
    function_id, args, kwargs = payload
    return await providers._functions[function_id]._fn(*args, **kwargs)


@final
class Resilient(Generic[P, R]):
    """An async function whose calls run through a provider actor (see :func:`resilient`).

    Calling it returns what the function returns, or raises the provider's typed error.  The
    original function is :attr:`__wrapped__`.
    """

    __slots__ = ("__dict__", "_fallback", "_fn", "_id", "_key", "_provider", "_timeout")

    def __init__(
        self,
        provider: str,
        fn: Callable[P, Awaitable[R]],
        *,
        key: Callable[..., str | None] | None,
        timeout: float | None,
        fallback: Callable[..., Awaitable[Any]] | None,
    ) -> None:
        self._provider = provider
        self._fn = fn
        self._key = key
        self._timeout = timeout
        self._fallback = fallback
        self._id = f"{getattr(fn, '__qualname__', type(fn).__name__)}#{next(_IDS)}"
        functools.update_wrapper(self, fn)

    @property
    def provider(self) -> str:
        """The name of the provider the calls go through."""
        return self._provider

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function through its provider (see :func:`resilient`).

        Raises:
            RuntimeError: no :func:`open_providers` block is running in this context.
            CircuitOpen, RetriesExhausted, RetryBudgetExhausted, BulkheadFull, RateLimited,
            ProviderError, ProviderTimeout, IdempotencyConflict, AskTimeout: as
            :meth:`Provider.call`.
        """
        providers = _CURRENT.get()
        if providers is None:
            raise RuntimeError(
                f"{self._id.partition('#')[0]}() runs through the provider {self._provider!r}: "
                "call it inside `async with open_providers(...)` (in the same task, or a task "
                "started inside that block)"
            )
        providers._functions.setdefault(self._id, self)
        client = providers._clients.get(self._provider)
        if client is None:
            client = await providers.get(self._provider)
        key = None if self._key is None else self._key(*args, **kwargs)
        try:
            result: R = await client.call((self._id, args, kwargs), key=key, timeout=self._timeout)
        except AuraError as exc:
            # Failed for good (after the provider's retries): the fallback answers, unless the
            # request itself is wrong or the caller's time is up.
            if self._fallback is None or exc.category is ErrorCategory.VALIDATION:
                raise
            if isinstance(exc, AskTimeout):
                raise
            substitute: R = await self._fallback(*args, **kwargs)
            return substitute
        return result

    def __repr__(self) -> str:
        return f"<Resilient {self._id.partition('#')[0]} via {self._provider!r}>"


# Two signatures so that the decorator stays generic (typed by the function it decorates) when
# no fallback binds its parameters; ``key`` takes the function's arguments, unchecked.
@overload
def resilient(
    provider: str,
    *,
    key: Callable[..., str | None] | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Resilient[P, R]]: ...


@overload
def resilient(
    provider: str,
    *,
    key: Callable[..., str | None] | None = None,
    timeout: float | None = None,
    fallback: Callable[P, Awaitable[R]],
) -> Callable[[Callable[P, Awaitable[R]]], Resilient[P, R]]: ...


def resilient(
    provider: str,
    *,
    key: Callable[..., str | None] | None = None,
    timeout: float | None = None,
    fallback: Callable[..., Awaitable[Any]] | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Resilient[P, R]]:
    """Run every call of the decorated async function through the provider ``provider``.

    The provider actor of that name in the current :func:`open_providers` block runs the
    function under its circuit breaker, retry policy and budget, bulkhead, rate limit and
    idempotency table, and reports each attempt to the monitor.  Failures are classified into
    the ten categories (HTTP statuses, httpx and OS errors, ``Retry-After``); transient ones
    are retried with backoff while attempts, the budget and the deadline allow.

    Args:
        provider: the provider's name: its section in the configuration
            (``[providers.openai]``), or any name (it then gets the ``[defaults]``).
        key: ``key(*args, **kwargs)`` -> the call's idempotency key (``None``: no key): the
            same key runs at most once within the key's TTL, concurrent callers join it.
        timeout: seconds a call may take in all, retries included (default: the provider's
            ask timeout, 30 s); the caller's trio deadline applies too.
        fallback: an async function taking the same arguments, called when the call failed for
            good (not for a validation error, nor an ``AskTimeout``): its result is the call's.

    Example::

        @resilient("openai", key=lambda prompt, request_id: request_id)
        async def complete(prompt: str, request_id: str) -> str:
            response = await http.post("https://api.openai.com/v1/responses", json=...)
            response.raise_for_status()
            return response.json()["output_text"]

        async with open_providers():
            text = await complete("hello", "req-42")

    Works on plain functions and on bound methods (``resilient("openai")(client.complete)``).
    """
    if not isinstance(provider, str) or not provider:
        raise TypeError(f"resilient() needs a provider name, got {provider!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")

    def decorate(fn: Callable[P, Awaitable[R]]) -> Resilient[P, R]:
        if not callable(fn):
            raise TypeError(f"@resilient({provider!r}) decorates an async function, got {fn!r}")
        return Resilient(provider, fn, key=key, timeout=timeout, fallback=fallback)

    return decorate


@asynccontextmanager
async def open_providers(
    config: ResilienceConfig | str | os.PathLike[str] | None = None,
    *,
    start: Iterable[str] = (),
    seed: int | None = None,
    fleet: FleetMember | None = None,
) -> AsyncIterator[Providers]:
    """Run a monitor and the provider actors for the duration of an ``async with`` block.

    Args:
        config: a :class:`~actors.ResilienceConfig`, or the path of a TOML or JSON file
            (:func:`~actors.load_config`); default ``ResilienceConfig.default()``.
        start: names of providers to start now besides those the configuration names (others
            start at their first call).
        seed: seeds the random sources (restart jitter), for replayable runs.
        fleet: a fleet member to give the providers; by default the configuration's
            ``[fleet]`` section, if any, is opened for the block (needs the ``fleet`` extra).

    Yields:
        The :class:`Providers` handle, also current for :func:`resilient` functions called in
        the block (and in trio tasks started inside it).

    Raises:
        ConfigError: the configuration file is invalid.
        RuntimeError: not running under trio (``trio.run(main)``).
        SupervisorGaveUp: the tree gave up (providers crashing in a loop).

    Example::

        async with open_providers("resilience.toml") as providers:
            print(await complete("hello"))
            print(await (await providers.get("openai")).status())
    """
    if config is None:
        config = ResilienceConfig.default()
    elif not isinstance(config, ResilienceConfig):
        config = load_config(config)
    async with AsyncExitStack() as stack:
        if fleet is None and config.fleet is not None:
            fleet = await stack.enter_async_context(open_fleet(config.fleet))
        async with _open_providers(config, start, seed, fleet) as providers:
            yield providers


@asynccontextmanager
async def _open_providers(
    config: ResilienceConfig, start: Iterable[str], seed: int | None, fleet: FleetMember | None
) -> AsyncIterator[Providers]:
    providers = Providers(config, fleet)
    names = list(dict.fromkeys([*config.providers, *start]))
    for name, settings in config.providers.items():
        if settings.fallback is not None:
            log.warning(
                "provider %r: its configured fallback %r is not used under open_providers "
                "(every provider would run the same function): give the function a fallback "
                "(@resilient(..., fallback=...))",
                name,
                settings.fallback,
            )
    tree = SupervisorSpec(
        "aura",
        [
            ChildSpec(MONITOR, lambda: MonitorActor(config.monitoring)),
            SupervisorSpec(PROVIDERS, [providers._spec(name) for name in names]),
        ],
    )
    token = _CURRENT.set(providers)  # before the tree starts: its tasks inherit the context
    try:
        async with open_supervisor(tree, seed=seed) as root:
            providers._root = root
            root.add_listener(root.ref(MONITOR).tell_nowait)  # supervision events -> monitor
            try:
                yield providers
            finally:
                providers._root = None
    finally:
        _CURRENT.reset(token)


def current_providers() -> Providers | None:
    """The :class:`Providers` of the innermost running :func:`open_providers`, or ``None``."""
    return _CURRENT.get()
