"""Units and the ledger: splitting, ledger transitions, idempotence, on Dramatiq's StubBroker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from fetcher.app.distributed import UnitWorker, enqueue, job_status
from fetcher.app.settings import load_settings
from fetcher.distributed.broker import StopFlag, UnitRetry, send_units
from fetcher.distributed.ledger import Claim, Ledger
from fetcher.distributed.runner import UnitOutcome, run_unit
from fetcher.distributed.units import Unit, check_job_id, message_args, split
from fetcher.errors import ConfigError
from fetcher.run.client import Client
from fetcher.simulator import SimulatorConfig, serve
from fetcher.sinks._schema import WORKSPACE_SCHEMA
from tests.distributed import (
    KEY_A,
    KEY_B,
    job_settings,
    join,
    own_name,
    own_schema_and_table,
    read_rows,
    stub_workers,
)
from tests.pg import require_postgres, server_dsn

SHARED = """
start = "2024-02-01"
end = "2024-02-03"
slice = "day"
type = ["prospect", "email"]
page_size = 5
max_attempts = 1
log_level = "warning"
"""


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, str, str]]:
    """(dsn, ledger schema, results table), the schema and table this test's own."""
    dsn = server_dsn()
    await require_postgres(dsn)
    async with own_schema_and_table(dsn) as (schema, table):
        yield dsn, schema, table


def two_workspaces(base_url: str, *, key_b_var: str = "GLOBEX_KEY") -> tuple[str, str]:
    return (
        f'name = "acme"\napi_key_env = "ACME_KEY"\nbase_url = "{base_url}"\nall_users = true',
        f'name = "globex"\napi_key_env = "{key_b_var}"\nbase_url = "{base_url}"\n'
        'users = ["u-not-in-team"]',
    )


# --- splitting ----------------------------------------------------------------------------------


def test_a_job_splits_into_one_unit_per_workspace_slice_type_and_batch(tmp_path: Path) -> None:
    settings = job_settings(
        tmp_path / "job.toml",
        "postgresql://db/x",
        "t",
        SHARED + 'user_batch_size = 2\nusers = ["a", "b", "c"]\n',
        'name = "acme"\napi_key_env = "A"',
        'name = "globex"\napi_key_env = "B"\nusers = ["d"]',
    )
    assert settings.workspaces is not None
    specs = [
        spec
        for w in settings.workspaces
        for spec in settings.for_workspace(w).queries(workspace=w.name)
    ]
    units = split(specs)
    # acme: 3 days x 2 types x 2 batches; globex: 3 x 2 x 1
    assert len(units) == 12 + 6
    assert len({u.unit_id for u in units}) == len(units)
    assert {u.user_batch for u in units if u.workspace == "acme"} == {0, 1}
    assert {u.user_batch for u in units if u.workspace == "globex"} == {0}
    assert split(specs) == units  # the same job splits the same way
    again = Unit.from_json(units[0].unit_id, units[0].spec_json(), units[0].user_batch)
    assert again == units[0]
    assert message_args("job-1", units[0]) == ("job-1", units[0].unit_id)
    with pytest.raises(ConfigError, match="twice"):
        split([*specs, specs[0]])
    with pytest.raises(ConfigError, match="another version"):
        Unit.from_json("prospect:2024-02-01..2024-02-01:000000000000", units[0].spec_json())
    with pytest.raises(ConfigError) as bad:
        check_job_id("no spaces please")
    assert bad.value.field == "--job-id"


# --- ledger transitions -------------------------------------------------------------------------


async def test_ledger_transitions(pg: tuple[str, str, str], tmp_path: Path) -> None:
    dsn, schema, table = pg
    settings = job_settings(
        tmp_path / "job.toml",
        dsn,
        table,
        SHARED + 'users = ["a"]\n',
        'name = "w"\napi_key_env = "A"',
    )
    assert settings.workspaces is not None
    units = split(settings.for_workspace(settings.workspaces[0]).queries(workspace="w"))
    ids = [u.unit_id for u in units]
    job = own_name("job")
    async with Ledger(dsn, schema=schema) as ledger, Ledger(dsn, schema=schema) as other:
        await ledger.prepare_results(table, WORKSPACE_SCHEMA)
        kwargs: dict[str, Any] = {"results_table": table, "workspaces": True, "settings": {}}
        assert await ledger.record_job(job, units=units, **kwargs)
        assert not await ledger.record_job(job, units=units, **kwargs)  # again: nothing changes
        with pytest.raises(ConfigError, match="choose another --job-id"):
            await ledger.record_job(job, units=units[:-1], **kwargs)
        status = await ledger.status(job)
        assert status is not None and status.units["queued"] == len(units)
        assert sorted(await ledger.to_send(job)) == sorted(ids)

        claim = await ledger.claim(job, ids[0], worker="w1")
        assert claim is not None and claim.deliveries == 1 and not claim.resume.done
        # Another worker with the same message while the first has it: nothing.
        assert await other.claim(job, ids[0], worker="w2") is None
        await ledger.finish(job, ids[0])
        await ledger.release(job, ids[0])
        assert await other.claim(job, ids[0], worker="w2") is None  # done: a duplicate is a no-op

        claim = await ledger.claim(job, ids[1], worker="w1")
        assert claim is not None
        assert await ledger.fail(job, ids[1], RuntimeError("boom"), final=False, worker="w1") == 1
        assert (await ledger.units(job))[sorted(ids).index(ids[1])]["state"] == "queued"
        assert await ledger.fail(job, ids[1], RuntimeError("boom 2"), final=True, worker="w1") == 2
        await ledger.release(job, ids[1])
        assert await other.claim(job, ids[1], worker="w2") is None  # failed: not worked again

        failed_all = await ledger.fail_workspace(job, "w", RuntimeError("refused"), worker="w1")
        assert sorted(failed_all) == sorted(ids[2:])
        status = await ledger.status(job)
        assert status is not None
        assert status.units == {"done": 1, "running": 0, "queued": 0, "failed": len(ids) - 1}
        assert status.finished and not status.ok
        assert {f["unit"] for f in status.failed} == set(ids[1:])
        # Enqueue again: exactly the units not done, failures forgotten.
        assert sorted(await ledger.to_send(job)) == sorted(ids[1:])
        rows = {r["unit_id"]: r for r in await ledger.units(job)}
        assert rows[ids[1]]["failures"] == 0 and rows[ids[1]]["error"] is None
        assert rows[ids[0]]["state"] == "done"
        errors = await ledger.connection.fetchval(
            f'SELECT count(*) FROM "{schema}".errors WHERE job_id = $1', job
        )
        assert errors == 2 + len(ids) - 2


async def test_a_page_and_its_checkpoint_commit_together_and_resume(
    pg: tuple[str, str, str], tmp_path: Path
) -> None:
    """Stop after page 2; the next attempt asks only for the pages after it; rows exact."""
    dsn, schema, table = pg
    config = SimulatorConfig(seed=7, team_size=23, api_keys=(KEY_A,), latency_ms=80)
    async with serve(config) as sim:
        settings = job_settings(
            tmp_path / "job.toml",
            dsn,
            table,
            SHARED.replace("max_attempts = 1", ""),
            f'name = "acme"\napi_key_env = "ACME_KEY"\nbase_url = "{sim.base_url}"',
        )
        spec = settings.queries(sim.user_ids, workspace="acme")[0]
        (unit,) = split([spec])
        job = own_name("job")
        async with CountingLedger(dsn, schema=schema) as ledger:
            await ledger.prepare_results(table, WORKSPACE_SCHEMA)
            await ledger.record_job(
                job, results_table=table, workspaces=True, settings={}, units=[unit]
            )
            async with Client(api_key=KEY_A, base_url=sim.base_url, concurrency=1) as client:
                claim = await ledger.claim(job, unit.unit_id, worker="t")
                assert claim is not None

                def after_two() -> bool:
                    return ledger.pages_written >= 2

                def attempt(claim: Claim, **stop: Any) -> Awaitable[UnitOutcome]:
                    return run_unit(
                        job,
                        claim,
                        client=client,
                        ledger=ledger,
                        table=table,
                        schema=WORKSPACE_SCHEMA,
                        max_pages=100,
                        repair_rounds=3,
                        **stop,
                    )

                outcome = await attempt(claim, should_stop=after_two)
                assert outcome.stopped and 2 <= outcome.pages < 5
                await ledger.release(job, unit.unit_id)
                rows = await read_rows(dsn, table)
                assert len(rows) == 5 * outcome.pages  # each page whole, with its checkpoint
                claim = await ledger.claim(job, unit.unit_id, worker="t")
                assert claim is not None and len(claim.resume.done) == outcome.pages
                assert len(claim.resume.written) == len(rows)
                second = await attempt(claim)
                assert not second.stopped and outcome.pages + second.pages == 5
        rows = await read_rows(dsn, table)
        want = [r["userId"] for r in sim.expected_rows(spec.body(1))]
        assert sorted(r["user_id"] for r in rows) == sorted(want)
        assert {r["workspace"] for r in rows} == {"acme"}
        assert not sim.stats.snapshot()["pages_fetched_twice"]


class CountingLedger(Ledger):
    pages_written = 0

    async def write_page(self, *args: Any, **kwargs: Any) -> int:
        rows = await super().write_page(*args, **kwargs)
        self.pages_written += 1
        return rows


# --- on the stub broker -------------------------------------------------------------------------


async def test_stub_broker_runs_a_job_exactly_and_a_second_delivery_changes_nothing(
    pg: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema, table = pg
    config = SimulatorConfig(seed=3, team_size=13, api_keys=(KEY_A, KEY_B))
    async with serve(config) as sim:
        acme, globex = two_workspaces(sim.base_url)
        globex = globex.replace('users = ["u-not-in-team"]', f'users = ["{sim.user_ids[0]}"]')
        settings = job_settings(tmp_path / "job.toml", dsn, table, SHARED, acme, globex)
        env = {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}
        monkeypatch.setenv("ACME_KEY", KEY_A)  # enqueue asks acme's team list with it
        with stub_workers(dsn, schema, env=env) as (broker, _, _):
            result = await enqueue(settings, broker=broker, ledger_schema=schema)
            assert (result.units, result.sent, result.new) == (12, 12, True)
            await join(broker)
            status = await job_status(SecretStr(dsn), result.job_id, ledger_schema=schema)
            assert status.ok, status
            assert status.units["done"] == 12
            first = await read_rows(dsn, table)
            # acme: 13 users x 3 days x 2 types; globex: 1 user x 3 x 2
            assert len(first) == 13 * 6 + 6
            for workspace, users in (("acme", sim.user_ids), ("globex", sim.user_ids[:1])):
                mine = [r for r in first if r["workspace"] == workspace]
                assert sorted(r["user_id"] for r in mine) == sorted(users * 6)
            # A unit sent again by hand: claimed as done, nothing fetched or written.
            requests = sim.stats.requests
            async with Ledger(dsn, schema=schema) as ledger:
                some_unit = (await ledger.units(result.job_id))[0]["unit_id"]
            send_units(broker, result.job_id, [some_unit])
            await join(broker)
            assert await read_rows(dsn, table) == first
            assert sim.stats.requests == requests
            # Enqueue again: complete, nothing sent.
            again = await enqueue(settings, broker=broker, ledger_schema=schema)
            assert (again.job_id, again.sent, again.new) == (result.job_id, 0, False)


async def unit_rows(dsn: str, schema: str, job: str) -> list[dict[str, Any]]:
    async with Ledger(dsn, schema=schema) as ledger:
        return await ledger.units(job)


async def test_a_unit_out_of_attempts_fails_and_enqueue_again_retries_just_it(
    pg: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema, table = pg
    # Page 2 always answers 500: acme's queries (13 users, 3 pages) can never finish;
    # globex's (one user, one page) can.
    config = SimulatorConfig(
        seed=3, team_size=13, api_keys=(KEY_A, KEY_B), fail_pages=frozenset({2})
    )
    async with serve(config) as sim:
        acme, globex = two_workspaces(sim.base_url)
        globex = globex.replace('users = ["u-not-in-team"]', f'users = ["{sim.user_ids[0]}"]')
        settings = job_settings(
            tmp_path / "job.toml", dsn, table, SHARED + "unit_attempts = 2\n", acme, globex
        )
        monkeypatch.setenv("ACME_KEY", KEY_A)
        env = {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}
        with stub_workers(dsn, schema, env=env) as (broker, _, _):
            result = await enqueue(settings, broker=broker, ledger_schema=schema)
            await join(broker)
            status = await job_status(SecretStr(dsn), result.job_id, ledger_schema=schema)
            assert status.units == {"done": 6, "running": 0, "queued": 0, "failed": 6}
            assert {f["unit"].split("/")[0] for f in status.failed} == {"acme"}
            assert all("page 2" in f["error"] for f in status.failed), status.failed
            rows = {r["unit_id"]: r for r in await unit_rows(dsn, schema, result.job_id)}
            assert {r["deliveries"] for r in rows.values() if r["workspace"] == "acme"} == {2}
            # Pages 1 and 3 of each acme unit were committed once and not asked for again.
            assert status.pages == 6 + 6 * 2
            asked = sim.stats.snapshot()["pages"]
            assert {(p["page"], p["requests"]) for p in asked} == {(1, 1), (2, 2), (3, 1)}
            again = await enqueue(settings, broker=broker, ledger_schema=schema)
            assert (again.sent, again.new) == (6, False)
            await join(broker)
            rows = {r["unit_id"]: r for r in await unit_rows(dsn, schema, result.job_id)}
            by_workspace = {
                w: {r["deliveries"] for r in rows.values() if r["workspace"] == w}
                for w in ("acme", "globex")
            }
            assert by_workspace == {"acme": {4}, "globex": {1}}


async def test_a_refused_key_fails_its_workspaces_units_at_once(
    pg: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema, table = pg
    async with serve(SimulatorConfig(seed=3, team_size=8, api_keys=(KEY_A,))) as sim:
        acme, globex = two_workspaces(sim.base_url)
        settings = job_settings(tmp_path / "job.toml", dsn, table, SHARED, acme, globex)
        monkeypatch.setenv("ACME_KEY", KEY_A)
        env = {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}  # KEY_B is not a key this server takes
        with stub_workers(dsn, schema, env=env, threads=1) as (broker, _, _):
            result = await enqueue(settings, broker=broker, ledger_schema=schema)
            await join(broker)
        status = await job_status(SecretStr(dsn), result.job_id, ledger_schema=schema)
        assert status.units == {"done": 6, "running": 0, "queued": 0, "failed": 6}
        rows = await unit_rows(dsn, schema, result.job_id)
        globex_rows = [r for r in rows if r["workspace"] == "globex"]
        # One delivery met the refusal; the other five were failed with it, untried.
        assert sum(r["deliveries"] for r in globex_rows) == 1
        assert {r["failures"] for r in globex_rows} == {0}
        assert all("key" in (r["error"] or "").lower() for r in globex_rows)
        assert KEY_B not in repr(rows)


async def test_a_worker_without_the_key_fails_the_unit_saying_which_variable(
    pg: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema, table = pg
    async with serve(SimulatorConfig(seed=3, team_size=8, api_keys=(KEY_A, KEY_B))) as sim:
        acme, globex = two_workspaces(sim.base_url)
        settings = job_settings(tmp_path / "job.toml", dsn, table, SHARED, acme, globex)
        monkeypatch.setenv("ACME_KEY", KEY_A)
        with stub_workers(dsn, schema, env={"ACME_KEY": KEY_A}) as (broker, _, _):
            result = await enqueue(settings, broker=broker, ledger_schema=schema)
            await join(broker)
        status = await job_status(SecretStr(dsn), result.job_id, ledger_schema=schema)
        assert status.units["done"] == 6 and status.units["failed"] == 6
        assert all("GLOBEX_KEY" in f["error"] for f in status.failed)


async def test_enqueue_refuses_a_file_sink_before_anything(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(SHARED + f'users = ["a"]\nout = "{tmp_path / "x.jsonl"}"\n')
    with pytest.raises(ConfigError, match="PostgreSQL only") as caught:
        await enqueue(load_settings({}, config_file=path), broker=object())  # type: ignore[arg-type]
    assert caught.value.field == "--sink"
    path.write_text(
        SHARED + 'users = ["a"]\nsink = "postgres"\npostgres_dsn = "postgresql://db/x"\n'
        "catch_up = true\n"
    )
    with pytest.raises(ConfigError, match="give the job its window") as caught:
        await enqueue(load_settings({}, config_file=path), broker=object())  # type: ignore[arg-type]
    assert caught.value.field == "catch_up"


async def test_one_client_per_key_serves_every_unit_and_the_next_job(
    pg: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema, table = pg
    async with serve(SimulatorConfig(seed=3, team_size=6, api_keys=(KEY_A, KEY_B))) as sim:
        acme, globex = two_workspaces(sim.base_url)
        settings = job_settings(tmp_path / "job.toml", dsn, table, SHARED, acme, globex)
        monkeypatch.setenv("ACME_KEY", KEY_A)
        env = {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}
        with stub_workers(dsn, schema, env=env) as (broker, _, work):
            for job in (own_name("job"), own_name("job")):
                await enqueue(settings, broker=broker, job_id=job, ledger_schema=schema)
                await join(broker)
                assert (await job_status(SecretStr(dsn), job, ledger_schema=schema)).ok
            assert len(work._clients) == 2  # acme's and globex's, for 24 units of two jobs


async def test_a_ledger_out_of_reach_leaves_the_unit_to_dramatiqs_retries() -> None:
    work = UnitWorker(
        SecretStr("postgresql://fetcher:s3cret-pw@127.0.0.1:9/test"),
        broker=object(),  # type: ignore[arg-type]
        broker_url=None,
        stop=StopFlag(),
    )
    with pytest.raises(UnitRetry, match="cannot connect") as caught:
        await work("job-1", "unit-1")
    assert "s3cret-pw" not in str(caught.value)
    assert work.busy == 0
