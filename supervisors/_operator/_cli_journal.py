"""The ``aura`` commands about sagas and their journal: the journal part of ``aura status``,
``aura sagas`` and ``aura journal migrate``.

``aura sagas URL`` lists the unfinished sagas (and those waiting for an operator) of a running
application from its admin API, each with its owner when the journal is shared by a fleet
(``PostgresJournal``): the owner's id and whether its lease is live (an expired owner's sagas
are taken over by a survivor within about a lease).  ``aura sagas URL SAGA_ID`` prints one
saga's audit trail.  A journal of one instance (``SqliteJournal``, ``MemoryJournal``) has no
owners: the column says so.

``aura journal migrate --from sqlite:PATH --to URL`` copies a single-host SQLite journal into a
PostgreSQL one (see :mod:`actors._saga._journals._migrate`): every saga with its events,
finished or not.  The URL's password never appears in what it prints; give it through
``$PGPASSWORD`` or ``~/.pgpass`` rather than the command line, which every user of the machine
can read.

Everything a server sent is shown escaped and redacted (:func:`shown_text`): a saga id or a
reason cannot move the cursor or leak a secret onto the terminal.  Instance ids are only
escaped: they are random hex, which the redactor would take for a token.
"""

from __future__ import annotations

import argparse
from typing import Any, Final, TextIO

import msgspec

from actors._errors import AuraError
from actors._policies._redact import escape_control, redact

__all__ = [
    "add_journal_commands",
    "cmd_journal",
    "cmd_sagas",
    "format_journal",
    "format_saga",
    "format_sagas",
    "shown_text",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1

#: Characters of an instance id shown in tables (ids are 32 hex digits; 12 tell them apart).
_SHORT_ID: Final = 12


def shown_text(value: object) -> str:
    """A value the server sent (or an error quoting a URL), as inert text without secrets."""
    return escape_control(redact(str(value)))


def _id(instance_id: object) -> str:
    """An instance id, escaped but not redacted: a random hex id looks like a token to the
    redactor, and is none (it grants nothing)."""
    return escape_control(str(instance_id))


def _short(instance_id: object) -> str:
    return _id(instance_id)[:_SHORT_ID]


def _lease(instance: dict[str, Any]) -> str:
    state = str(instance.get("lease", "?"))
    remaining = instance.get("lease_remaining")
    if state == "live" and isinstance(remaining, int | float):
        return f"live {remaining:.1f}s"
    if state == "expired" and isinstance(remaining, int | float):
        return f"expired {-remaining:.1f}s ago"
    return shown_text(state)


def format_journal(journal: dict[str, Any]) -> list[str]:
    """The lines of ``aura status`` about the saga coordinator's journal (its
    ``GET /api/resilience/journal`` document): the journal and its state, then, for a journal
    shared by a fleet, each instance with its lease and the sagas it owns."""
    kind = shown_text(journal.get("kind", "journal"))
    where = journal.get("where") or ""
    state = "available" if journal.get("available") else "unavailable"
    if not journal.get("available") and journal.get("reason"):
        state += f": {shown_text(journal['reason'])}"
    head = f"saga journal: {kind}" + (f" at {shown_text(where)}" if where else "") + f": {state}"
    if not journal.get("shared"):
        return [head, "  one instance drives every saga (no owners, no leases)"]
    instances = journal.get("instances", [])
    lines = [
        head,
        f"  this instance {_short(journal.get('instance_id', ''))}, "
        f"{shown_text(journal.get('live', 0))} live instance(s) of {len(instances)}",
        f"  {'instance':<{_SHORT_ID + 7}} {'host:pid':<24} {'lease':<22} sagas owned",
    ]
    for i in instances:
        name = _short(i.get("instance_id", "")) + (" (this)" if i.get("this_instance") else "")
        where_it_runs = f"{shown_text(i.get('host', '?'))}:{shown_text(i.get('pid', '?'))}"
        lines.append(
            f"  {name:<{_SHORT_ID + 7}} {where_it_runs:<24} {_lease(i):<22} "
            f"{shown_text(i.get('sagas_owned', 0))}"
        )
    return lines


def _owner(owner: object, leases: dict[str, str] | None) -> str:
    if owner is None:
        return "-"
    shown = _short(owner)
    state = None if leases is None else leases.get(str(owner), "gone")
    return shown if state is None else f"{shown} ({state})"


def format_sagas(page: dict[str, Any], journal: dict[str, Any] | None) -> str:
    """``aura sagas``: a table of the unfinished sagas of ``page`` (a
    ``GET /api/resilience/sagas`` document) with their owners and, from ``journal`` (its
    ``GET /api/resilience/journal`` document, if it answered), whether each owner's lease is
    live."""
    items = page.get("items", [])
    total = page.get("total", len(items))
    shared = journal is not None and journal.get("shared")
    leases = None
    if journal is not None and shared:
        leases = {str(i.get("instance_id")): str(i.get("lease")) for i in journal["instances"]}
    lines = [f"sagas: {shown_text(total)} unfinished or waiting for an operator"]
    if len(items) < int(total if isinstance(total, int) else len(items)):
        lines[0] += f" (the first {len(items)} shown)"
    if journal is not None:
        lines += format_journal(journal)
    if not items:
        return "\n".join(lines)
    rows = [("saga", "definition", "phase", "steps done", "owner")]
    no_owners = journal is not None and not shared
    for s in items:
        owner = "(no owners)" if no_owners else _owner(s.get("owner"), leases)
        rows.append(
            (
                shown_text(s.get("saga_id", "?")),
                shown_text(s.get("definition", "?")),
                shown_text(s.get("phase", "?")),
                shown_text(s.get("next_step", "?")),
                owner,
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines.append("")
    for row in rows:
        cells = [row[k].ljust(widths[k]) for k in range(4)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


def format_saga(info: dict[str, Any]) -> str:
    """``aura sagas URL SAGA_ID``: one saga (a ``GET /api/resilience/sagas/{id}`` document)
    with its owner and audit trail."""
    owner = info.get("owner")
    if owner is None:
        who = "none (a journal of one instance)"
    else:
        alive = info.get("owner_alive")
        who = f"{_id(owner)} ({'live' if alive else 'lease expired or closed'})"
    lines = [
        f"saga {shown_text(info.get('saga_id', '?'))}: {shown_text(info.get('definition', '?'))}, "
        f"{shown_text(info.get('phase', '?'))}" + (" (finished)" if info.get("finished") else ""),
        f"  owner: {who}" + (", running on this instance" if info.get("running_here") else ""),
        f"  created: {shown_text(info.get('created_at_iso') or info.get('created_at'))}, "
        f"updated: {shown_text(info.get('updated_at_iso') or info.get('updated_at'))}",
    ]
    if info.get("completed_steps"):
        lines.append(f"  completed: {', '.join(shown_text(s) for s in info['completed_steps'])}")
    if info.get("failed_step"):
        lines.append(f"  failed at: {shown_text(info['failed_step'])}")
    if info.get("compensated"):
        lines.append(f"  compensated: {', '.join(shown_text(s) for s in info['compensated'])}")
    lines.append("  events:")
    for e in info.get("events", []):
        step = e.get("step_name") or ("" if e.get("step") is None else f"step {e['step']}")
        detail = f": {shown_text(e['detail'])}" if e.get("detail") else ""
        lines.append(
            f"    #{shown_text(e.get('seq'))} {shown_text(e.get('kind'))}"
            + (f" {shown_text(step)}" if step else "")
            + detail
        )
    return "\n".join(lines)


def cmd_sagas(args: argparse.Namespace, client: Any, stdout: TextIO, stderr: TextIO) -> int:
    """``aura sagas URL [SAGA_ID]`` over ``client`` (an ``httpx.Client`` of the admin API):
    the unfinished sagas with their owners, or one saga."""
    from urllib.parse import quote

    import httpx

    documents: dict[str, Any] = {}
    base = shown_text(str(client.base_url).rstrip("/"))
    if args.saga_id is not None:
        paths = {"saga": f"/api/resilience/sagas/{quote(args.saga_id, safe='')}"}
    else:
        paths = {
            "sagas": f"/api/resilience/sagas?limit={args.limit}",
            "journal": "/api/resilience/journal",
        }
    try:
        for key, path in paths.items():
            response = client.get(path)
            if key == "journal" and response.status_code == 404:
                continue  # an application from before fleets
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code != 200 or not isinstance(body, dict):
                error = body.get("error", {}) if isinstance(body, dict) else {}
                message = error.get("message") or f"answered {response.status_code}"
                print(f"error: GET {base}{path}: {shown_text(message)}", file=stderr)
                if error.get("action"):
                    print(shown_text(error["action"]), file=stderr)
                return EXIT_ERROR
            documents[key] = body
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {base}: {shown_text(exc)}", file=stderr)
        return EXIT_ERROR
    if args.json:
        print(msgspec.json.encode(documents).decode(), file=stdout)
    elif args.saga_id is not None:
        print(format_saga(documents["saga"]), file=stdout)
    else:
        print(format_sagas(documents["sagas"], documents.get("journal")), file=stdout)
    return EXIT_OK


# ================================================================================ journal migrate


def add_journal_commands(commands: Any) -> None:
    """Add ``aura journal migrate`` to the ``aura`` subcommands."""
    journal = commands.add_parser("journal", help="saga journal commands")
    journal_commands = journal.add_subparsers(dest="journal_command", required=True)
    migrate = journal_commands.add_parser(
        "migrate",
        help="copy a single-host SQLite saga journal into PostgreSQL (for a fleet)",
        description=(
            "Copy every saga of a SQLite journal, finished or not, with its events, into a "
            "PostgreSQL journal; coordinators on PostgreSQL then resume the unfinished ones. "
            "Stop the application that uses the SQLite journal first (a journal in use is "
            "refused). Running it again copies nothing twice. Give the password through "
            "$PGPASSWORD or ~/.pgpass, not in the URL: the command line is visible to every "
            "user of the machine."
        ),
    )
    migrate.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="sqlite:PATH",
        help="the SQLite journal file (sqlite:PATH, or a plain path)",
    )
    migrate.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="the PostgreSQL server (postgresql://user@host:port/dbname)",
    )
    migrate.add_argument(
        "--schema",
        default="aura",
        help="the PostgreSQL schema of the journal (default aura: PostgresJournal's default)",
    )


def _source_path(source: str) -> str:
    for prefix in ("sqlite:///", "sqlite://", "sqlite:"):
        if source.startswith(prefix):
            path = source[len(prefix) :]
            return "/" + path if prefix == "sqlite:///" else path
    if "://" in source:
        raise AuraError(f"--from must be sqlite:PATH (a SQLite journal file), got {source!r}")
    return source


def cmd_journal(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``aura journal migrate``: copy, then report the counts (errors: exit 1, no password)."""
    from actors._saga._journals._postgres._migrate import migrate_sqlite_to_postgres

    path = _source_path(args.source)
    if not path:
        print("error: --from names no file (sqlite:PATH)", file=stderr)
        return EXIT_ERROR
    try:
        report = migrate_sqlite_to_postgres(path, args.target, schema=args.schema)
    except AuraError as exc:
        print(f"error: {shown_text(exc)}", file=stderr)
        if exc.suggested_action:
            print(shown_text(exc.suggested_action), file=stderr)
        return EXIT_ERROR
    print(report.describe(), file=stdout)
    return EXIT_OK
