"""The operator's terminal views: a rich live dashboard, and plain log lines for pipes and CI.

Theory of operation
-------------------
Both views are driven by :class:`~supervisors.OperatorSnapshot` values taken every
``refresh`` seconds by the caller's ``snapshot`` function, and never touch the actors
themselves.

* :func:`render_view` is a pure function from one snapshot to a rich renderable: a header
  (health, uptime, active alerts), the supervision tree (each node's state, restarts and
  mailbox depth), one table row per service (breaker, calls, errors, error rate and ratio,
  latency percentiles, calls in flight), the unfinished sagas and the active alerts.  Rows
  are capped (``max_rows``) so a large tree cannot flood the screen.
* :func:`run_live` redraws that view in a ``rich.live.Live`` from the trio loop (no refresh
  thread: ``auto_refresh`` is off and each snapshot is drawn when it is taken).  Log records
  printed meanwhile appear above the view (see :class:`ConsoleLogHandler`).
* :class:`ChangeLog` compares consecutive snapshots and reports what changed as log lines:
  health changes, breaker transitions, alerts raised and resolved, restarts.  ``aura run
  --no-live`` prints its health changes (the library logs the rest itself), plus a periodic
  one-line summary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import trio

from actors._policies._logs import library_logger
from actors._policies._redact import escape_control
from supervisors._events import TreeNode
from supervisors._operator._metrics import OperatorSnapshot

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.tree import Tree

__all__ = ["ChangeLog", "ConsoleLogHandler", "render_view", "run_live", "summary_line"]

logger: Final = library_logger("supervisors.live")

#: The format of records printed above the live view (the view shows the time).
CONSOLE_FORMAT: Final = "%(levelname)s %(name)s%(correlation)s: %(message)s"

_STATE_STYLE: Final = {
    "running": "green",
    "starting": "cyan",
    "restarting": "yellow",
    "stopping": "magenta",
    "stopped": "red",
    "closed": "green",
    "half_open": "yellow",
    "open": "bold red",
    "isolated": "bold magenta",
    "healthy": "bold green",
    "degraded": "bold yellow",
    "unhealthy": "bold red",
    "critical": "bold red",
    "warning": "yellow",
}


def _styled(text: str) -> str:
    style = _STATE_STYLE.get(text)
    return f"[{style}]{text}[/]" if style else _escape(text)


def _escape(text: str) -> str:
    """Text from callers or services, made inert: no rich markup, no control characters."""
    from rich.markup import escape

    return escape(escape_control(text))


def _seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1e3:.0f}ms"
    return f"{value:.2f}s"


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ================================================================================ rich view


def _tree(node: TreeNode, max_rows: int) -> Tree:
    from rich.tree import Tree

    def label(n: TreeNode) -> str:
        name = _escape(n.name or "(root)")
        kind = f"[dim]{n.strategy}[/]" if n.kind == "supervisor" else ""
        parts = [f"[bold]{name}[/]" if n.kind == "supervisor" else name, kind, _styled(n.state)]
        if n.restarts:
            parts.append(f"[yellow]restarts={n.restarts}[/]")
        if n.kind == "actor" and n.mailbox_depth:
            parts.append(f"mailbox={n.mailbox_depth}")
        return " ".join(p for p in parts if p)

    shown = 0
    root = Tree(label(node), guide_style="dim")

    def add(branch: Tree, parent: TreeNode) -> None:
        nonlocal shown
        for child in parent.children:
            if shown >= max_rows:
                branch.add(f"[dim]... {len(child.walk())} more[/]")
                return
            shown += 1
            sub = branch.add(label(child))
            add(sub, child)

    add(root, node)
    return root


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, padding=(0, 1), pad_edge=False)
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "message")  # type: ignore[arg-type]
    return table


def _services_table(snap: OperatorSnapshot, max_rows: int) -> RenderableType:
    columns = [("service", "left"), ("breaker", "left")]
    columns += [(c, "right") for c in ("trips", "calls", "errs", "err/min", "ratio", "p50", "p99")]
    table = _table("services (last window; name colored by health)", [*columns, ("busy", "right")])
    metrics = snap.metrics.services if snap.metrics is not None else {}
    breakers = {b.service: b for b in snap.breakers.breakers} if snap.breakers else {}
    health = snap.health.services if snap.health is not None else {}
    names = sorted(set(metrics) | set(breakers) | set(snap.providers))
    for name in names[:max_rows]:
        m = metrics.get(name)
        b = breakers.get(name)
        h = health.get(name)
        p = snap.providers.get(name)
        state = b.state if b is not None else (p.breaker if p is not None else "-")
        style = _STATE_STYLE.get(h.status.value, "") if h is not None else ""
        table.add_row(
            f"[{style}]{_escape(name)}[/]" if style else _escape(name),
            _styled(state),
            str(b.trips) if b is not None else "-",
            str(m.calls) if m is not None else "-",
            str(m.errors) if m is not None else "-",
            f"{m.error_rate_per_min:.1f}" if m is not None else "-",
            f"{m.error_ratio:.0%}" if m is not None else "-",
            _seconds(m.latency.get("p50")) if m is not None else "-",
            _seconds(m.latency.get("p99")) if m is not None else "-",
            str(p.running + p.queued + p.waiting) if p is not None else "-",
        )
    if len(names) > max_rows:
        table.caption = f"{len(names) - max_rows} more services"
    return table


def _sagas_table(sagas: list[Any], max_rows: int) -> RenderableType:
    if not sagas:
        return "sagas: none unfinished"
    columns = ["saga", "definition", "phase", "steps done", "compensated"]
    # A journal shared by a fleet names each saga's owner instance (its first 12 characters
    # tell instances apart); a journal of one instance has none: no column.
    owners = any(getattr(saga, "owner", None) is not None for saga in sagas)
    if owners:
        columns.append("owner")
    table = _table(f"sagas: {len(sagas)} unfinished", [(c, "left") for c in columns])
    for saga in sagas[:max_rows]:
        phase = getattr(saga, "phase", "")
        phase = str(getattr(phase, "value", phase))
        cells = [
            _escape(str(getattr(saga, "saga_id", saga))),
            _escape(str(getattr(saga, "definition", ""))),
            f"[bold red]{phase}[/]" if phase == "compensation_failed" else _escape(phase),
            str(getattr(saga, "next_step", "")),
            str(getattr(saga, "compensated", "")),
        ]
        if owners:
            owner = getattr(saga, "owner", None)
            cells.append("-" if owner is None else _escape(str(owner)[:12]))
        table.add_row(*cells)
    return table


def _alerts_table(snap: OperatorSnapshot, max_rows: int) -> RenderableType:
    assert snap.alerts is not None
    active = snap.alerts.active
    if not active:
        return "alerts: none active"
    columns = ["id", "severity", "rule", "service", "age", "message"]
    table = _table(f"alerts: {len(active)} active", [(c, "left") for c in columns])
    for alert in active[:max_rows]:
        table.add_row(
            str(alert.id),
            _styled(alert.severity.value),
            alert.rule.value,
            _escape(alert.service),
            _uptime(max(0.0, snap.at - alert.raised_at)),
            _escape(alert.message),
        )
    return table


def render_view(
    snapshot: OperatorSnapshot,
    *,
    title: str = "aura",
    started_at: float | None = None,
    max_rows: int = 30,
) -> RenderableType:
    """The live view of one snapshot, as a rich renderable (see the module docstring).

    ``started_at`` (trio time) shows the uptime in the header; ``max_rows`` caps each section.
    """
    from rich.console import Group
    from rich.panel import Panel

    health = snapshot.health
    parts = [f"[bold]{_escape(title)}[/]"]
    parts.append(f"health {_styled(health.status.value)}" if health else "health [dim]-[/]")
    if started_at is not None:
        parts.append(f"up {_uptime(snapshot.at - started_at)}")
    if snapshot.alerts is not None:
        parts.append(f"alerts {len(snapshot.alerts.active)}")
    if health is not None and health.reasons:
        parts.append(f"[dim]{_escape('; '.join(health.reasons))}[/]")
    sections: list[RenderableType] = [" | ".join(parts)]
    if snapshot.tree is not None:
        sections.append(
            Panel(_tree(snapshot.tree, max_rows * 2), title="supervision tree", expand=False)
        )
    if snapshot.metrics is not None or snapshot.breakers is not None or snapshot.providers:
        sections.append(_services_table(snapshot, max_rows))
    if snapshot.sagas is not None:
        sections.append(_sagas_table(list(snapshot.sagas), max_rows))
    if snapshot.alerts is not None:
        sections.append(_alerts_table(snapshot, max_rows))
    for problem in snapshot.problems[:5]:
        sections.append(f"[dim red]{_escape(problem)}[/]")
    return Group(*sections)


async def run_live(
    snapshot: Callable[[], Awaitable[OperatorSnapshot]],
    console: Console,
    *,
    refresh: float = 0.5,
    title: str = "aura",
) -> None:
    """Redraw :func:`render_view` every ``refresh`` seconds until cancelled.

    On cancellation it draws once more from a fresh snapshot (shielded, so the final state
    stays on screen) and stops the live display.
    """
    from rich.live import Live

    started = trio.current_time()
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while True:
                snap = await snapshot()
                live.update(render_view(snap, title=title, started_at=started), refresh=True)
                await trio.sleep(refresh)
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 2.0
                snap = await snapshot()
                live.update(render_view(snap, title=title, started_at=started), refresh=True)


# ================================================================================ plain view


def summary_line(snapshot: OperatorSnapshot) -> str:
    """One line: health, services, open breakers, active alerts, restarts, unfinished sagas.

    Service names are escaped: the line has no control characters.
    """
    health = snapshot.health.status.value if snapshot.health is not None else "-"
    breakers = snapshot.breakers.breakers if snapshot.breakers is not None else []
    opened = [b.service for b in breakers if b.state != "closed"]
    alerts = len(snapshot.alerts.active) if snapshot.alerts is not None else 0
    calls = errors = 0
    if snapshot.metrics is not None:
        for m in snapshot.metrics.services.values():
            calls += m.calls
            errors += m.errors
    restarts = sum(n.restarts for n in snapshot.tree.walk()) if snapshot.tree else 0
    line = (
        f"health={health} services={len(breakers)} calls={calls} errors={errors} "
        f"breakers_not_closed=[{','.join(opened)}] alerts={alerts} restarts={restarts}"
    )
    if snapshot.sagas is not None:
        line += f" sagas_unfinished={len(snapshot.sagas)}"
    return escape_control(line)


class ChangeLog:
    """What changed between consecutive snapshots, as log messages (``--no-live``).

    Args:
        health_only: report only health changes.  ``aura run`` sets it: breaker transitions,
            alerts and restarts are logged by the library itself as they happen (the
            ``actors.provider``, ``actors.monitor`` and ``supervisors`` loggers), so the view
            reporting them again would show each event twice.
    """

    def __init__(self, *, health_only: bool = False) -> None:
        self._health_only = health_only
        self._health: str | None = None
        self._breakers: dict[str, str] = {}
        self._alerts: dict[int, str] = {}
        self._restarts: dict[str, int] = {}

    def changes(self, snapshot: OperatorSnapshot) -> Iterator[tuple[int, str]]:
        """``(level, message)`` for each change since the previous snapshot.

        Names and messages are escaped (:func:`~actors._policies._redact.escape_control`): each
        message is one line without control characters.
        """
        for level, message in self._changes(snapshot):
            yield level, escape_control(message)

    def _changes(self, snapshot: OperatorSnapshot) -> Iterator[tuple[int, str]]:
        if snapshot.health is not None:
            status = snapshot.health.status.value
            if status != self._health:
                level = logging.WARNING if status == "unhealthy" else logging.INFO
                yield level, f"health {self._health or '-'} -> {status}"
                self._health = status
        if self._health_only:
            return
        if snapshot.breakers is not None:
            for b in snapshot.breakers.breakers:
                old = self._breakers.get(b.service, "closed")
                if b.state != old:
                    level = logging.WARNING if b.state in ("open", "isolated") else logging.INFO
                    yield level, f"breaker {b.service}: {old} -> {b.state}"
                self._breakers[b.service] = b.state
        if snapshot.alerts is not None:
            active = {a.id: a for a in snapshot.alerts.active}
            for alert_id, alert in active.items():
                if alert_id not in self._alerts:
                    level = logging.ERROR if alert.severity.value == "critical" else logging.WARNING
                    yield (
                        level,
                        (
                            f"alert raised #{alert.id} {alert.severity.value} {alert.rule.value} "
                            f"{alert.service}: {alert.message}"
                        ),
                    )
            for alert_id, text in self._alerts.items():
                if alert_id not in active:
                    yield logging.INFO, f"alert resolved #{alert_id} {text}"
            self._alerts = {i: f"{a.rule.value} {a.service}" for i, a in active.items()}
        if snapshot.tree is not None:
            for node in snapshot.tree.walk():
                before = self._restarts.get(node.path, 0)
                if node.restarts > before:
                    yield (
                        logging.INFO,
                        (f"{node.path or '(root)'} restarted (restarts={node.restarts})"),
                    )
                self._restarts[node.path] = node.restarts


async def run_plain(
    snapshot: Callable[[], Awaitable[OperatorSnapshot]],
    *,
    refresh: float = 0.5,
    summary_every: float = 5.0,
) -> None:
    """Log health changes every ``refresh`` seconds and a summary line every
    ``summary_every`` (breakers, alerts and restarts are the library's own log lines).

    Logs to the ``supervisors.live`` logger; on cancellation logs a last summary from a fresh
    snapshot.
    """
    changes = ChangeLog(health_only=True)
    next_summary = trio.current_time() + summary_every
    try:
        while True:
            snap = await snapshot()
            for level, message in changes.changes(snap):
                logger.log(level, "%s", message)
            if snap.at >= next_summary:
                logger.info("%s", summary_line(snap))
                next_summary = snap.at + summary_every
            await trio.sleep(refresh)
    finally:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 2.0
            snap = await snapshot()
            for level, message in changes.changes(snap):
                logger.log(level, "%s", message)
            logger.info("final: %s", summary_line(snap))


class ConsoleLogHandler(logging.Handler):
    """Writes formatted records with ``console.print``, so they appear above a live view.

    Formats with a :class:`~supervisors._operator._logging.PlainFormatter` (``LEVEL logger [ids]:
    message``) unless given another formatter.  Whatever the formatter, every control
    character but a line break is escaped before it reaches the terminal, and the lines after
    a record's first are indented, so no text can clear the screen or pass for a record.
    """

    def __init__(self, console: Console, level: int = logging.NOTSET) -> None:
        from supervisors._operator._logging import PlainFormatter

        super().__init__(level)
        self.console = console
        self.setFormatter(PlainFormatter(CONSOLE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        """Print one formatted record, escaped (markup and highlighting off)."""
        from supervisors._operator._logging import PlainFormatter

        try:
            text = escape_control(self.format(record), keep_newlines=True)
            if not isinstance(self.formatter, PlainFormatter):
                # Another formatter may leave a message's line breaks in: indent what follows
                # them, so no line of this record can pass for a record of its own.
                text = text.replace("\n", "\n  ")
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)
