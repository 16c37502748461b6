"""Helpers for the distributed tests: a ledger schema of one's own, Dramatiq's stub broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO
from pydantic import SecretStr

from fetcher.app.distributed import UnitWorker, shut_down
from fetcher.app.settings import ExportSettings, load_settings
from fetcher.distributed.broker import QUEUE, StopFlag, declare_actor

KEY_A = "key-acme-0123456789"
KEY_B = "key-globex-9876543210"
KEY_C = "key-initech-5555555555"


def own_name(prefix: str) -> str:
    """A schema, table or job name no other test (or concurrent run) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def own_schema_and_table(dsn: str) -> AsyncIterator[tuple[str, str]]:
    """A ledger schema and a results table of this test's own, dropped afterwards."""
    schema, table = own_name("fetcher_test_ledger"), own_name("fetcher_test_results")
    try:
        yield schema, table
    finally:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await connection.execute(f'DROP TABLE IF EXISTS "{table}"')
        finally:
            await connection.close()


def job_settings(path: Path, dsn: str, table: str, shared: str, *workspaces: str) -> ExportSettings:
    """Settings loaded from a config file written from these parts."""
    text = shared + f'\nsink = "postgres"\ntable = "{table}"\npostgres_dsn = "{dsn}"\n'
    text += "".join(f"\n[[workspaces]]\n{w}\n" for w in workspaces)
    path.write_text(text)
    return load_settings({}, config_file=path)


@contextmanager
def stub_workers(
    dsn: str, schema: str, *, env: dict[str, str], threads: int = 2
) -> Iterator[tuple[StubBroker, StopFlag, UnitWorker]]:
    """Dramatiq's StubBroker with fetcher's actor and a running in-process worker."""
    broker = StubBroker()
    broker.add_middleware(AsyncIO())
    stop = StopFlag()
    work = UnitWorker(
        SecretStr(dsn),
        broker=broker,
        broker_url=None,
        stop=stop,
        name="stub-worker",
        env=env,
        ledger_schema=schema,
    )
    declare_actor(broker, work)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
    worker.start()
    try:
        yield broker, stop, work
    finally:
        shut_down(worker, work, stop)
        broker.close()


async def join(broker: StubBroker) -> None:
    """Wait (in a thread) until the stub broker's queue and its delays are drained."""
    await anyio.to_thread.run_sync(lambda: broker.join(QUEUE, timeout=60_000))


async def read_rows(dsn: str, table: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [
            dict(r)
            for r in await connection.fetch(
                f'SELECT * FROM "{table}" ORDER BY workspace, window_start, type, user_id'
            )
        ]
    finally:
        await connection.close()
