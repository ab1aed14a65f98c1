"""Helpers for tests of the PostgreSQL journal: SQL run off the trio thread, lease ageing."""

from __future__ import annotations

from typing import Any

import psycopg
import trio

from actors._saga._journals._postgres._journal import PostgresJournal


def run_sql(url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction; its rows (``[]`` when it returns none)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


async def sql(url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """:func:`run_sql` on a worker thread."""
    return await trio.to_thread.run_sync(run_sql, url, statement, params)


async def open_journal(url: str, schema: str, **options: Any) -> PostgresJournal:
    journal = PostgresJournal(url, schema=schema, **options)
    await journal.open()
    return journal


async def expire_lease(url: str, schema: str, instance_id: str) -> None:
    """Make an instance's lease expire now, as if it had stopped renewing (a killed process)."""
    await sql(
        url,
        f'UPDATE "{schema}".instances SET lease_until = clock_timestamp() WHERE instance_id = %s',
        (instance_id,),
    )


async def age_connection(url: str, schema: str, instance_id: str, seconds: float) -> None:
    """Move an instance's connection time back by ``seconds`` (as if connected that long)."""
    await sql(
        url,
        f'UPDATE "{schema}".instances SET connected_at = connected_at - %s * interval '
        "'1 second' WHERE instance_id = %s",
        (seconds, instance_id),
    )


async def owners(url: str, schema: str) -> dict[str, tuple[str, int]]:
    """saga_id -> (owner, epoch) of every saga."""
    rows = await sql(url, f'SELECT saga_id, owner, epoch FROM "{schema}".sagas')
    return {row[0]: (row[1], row[2]) for row in rows}


async def travel(url: str, schema: str, seconds: float) -> None:
    """Let ``seconds`` pass for every lease row: their times move back by that much."""
    await sql(
        url,
        f'UPDATE "{schema}".instances SET started_at = started_at - %(s)s * interval '
        "'1 second', connected_at = connected_at - %(s)s * interval '1 second', "
        "lease_until = lease_until - %(s)s * interval '1 second'",
        {"s": seconds},
    )


async def waiting_for_end(journal: PostgresJournal, count: int = 1) -> None:
    """Return once ``count`` callers of ``journal.wait_finished`` have read their saga and
    are parked until it ends (10 s at most)."""
    with trio.fail_after(10):
        while (  # noqa: ASYNC110 (a condition of other tasks, not one event)
            sum(
                waiter.event.statistics().tasks_waiting
                for waiters in journal._finish_waiters.values()
                for waiter in waiters
            )
            < count
        ):
            await trio.sleep(0.01)
