"""Distributed mode end to end: real Redis, real PostgreSQL, real `fetcher worker` processes.

The simulator serves three keys, each with its own limit; the job has three
workspaces, one per key. Workers run as `python -m fetcher worker` subprocesses
and are stopped by their PID. Redis is used in database 12 only (its keys are
deleted after each test); the results table and the job ids are the test's own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import redis

from fetcher.distributed.broker import redis_broker, send_units
from fetcher.distributed.ledger import Ledger
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from fetcher.spec import QuerySpec
from tests.distributed import KEY_A, KEY_B, KEY_C, own_name, read_rows
from tests.pg import require_postgres, server_dsn

REDIS_URL = "redis://127.0.0.1:6379/12"
LIMITS = (8, 12, 16)  # per 1 s window, one per key
WORKSPACES = (
    ("acme", "ACME_KEY", KEY_A),
    ("globex", "GLOBEX_KEY", KEY_B),
    ("initech", "INITECH_KEY", KEY_C),
)
HEARTBEAT_S = "1.5"
#: acme has the team but 2 users, globex all but 1, initech the whole team (17).
USERS_SHORT_BY = {"acme": 2, "globex": 1, "initech": 0}
ROWS_PER_DAY = 2 * (15 + 16 + 17)  # both types, every workspace's users

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_db() -> Iterator[str]:
    """Redis database 12, emptied of what the test left (skipped without Redis, but in CI)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires Redis at {REDIS_URL}: {exc}", pytrace=False)
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, str, list[str]]]:
    """(dsn, results table, job ids to forget): the table dropped, the jobs deleted after."""
    dsn = server_dsn()
    await require_postgres(dsn)
    table, jobs = own_name("fetcher_test_dist"), list[str]()
    try:
        yield dsn, table, jobs
    finally:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f'DROP TABLE IF EXISTS "{table}"')
            if await connection.fetchval("SELECT to_regclass('fetcher.jobs')") is not None:
                await connection.execute("DELETE FROM fetcher.jobs WHERE job_id = ANY($1)", jobs)
        finally:
            await connection.close()


def forget_the_queue() -> None:
    """What a Redis restart without persistence does to Dramatiq: every message gone."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        names = list(client.scan_iter("dramatiq:*"))
        assert names, "the queue should hold something to lose"
        client.delete(*names)
    finally:
        client.close()


def sim_config(**overrides: Any) -> SimulatorConfig:
    fields: dict[str, Any] = {
        "seed": 11,
        "team_size": 17,
        "api_keys": (KEY_A, KEY_B, KEY_C),
        "rate_limit": max(LIMITS),
        "key_rate_limits": LIMITS,
        "rate_window_s": 1.0,
        "latency_ms": 5,
    }
    fields.update(overrides)
    return SimulatorConfig(**fields)


def users_of(sim: RunningSimulator, workspace: str) -> list[str]:
    """Each workspace its own users, so that the server tells their queries apart."""
    return sim.user_ids[: len(sim.user_ids) - USERS_SHORT_BY[workspace]]


def write_job(path: Path, sim: RunningSimulator, table: str, *, days: int = 2) -> Path:
    tables = ""
    for name, var, _ in WORKSPACES:
        tables += f'\n[[workspaces]]\nname = "{name}"\napi_key_env = "{var}"\n'
        tables += f'base_url = "{sim.base_url}"\n'
        if USERS_SHORT_BY[name]:
            tables += f"users = {json.dumps(users_of(sim, name))}\n"
        else:  # the whole team, from the team member list (asked for at enqueue)
            tables += "all_users = true\n"
    path.write_text(
        f'start = "2024-03-01"\nend = "2024-03-{days:02d}"\nslice = "day"\n'
        'type = ["prospect", "email"]\npage_size = 5\n'
        f'sink = "postgres"\ntable = "{table}"\nmax_attempts = 3\n' + tables
    )
    return path


def env(dsn: str, *, keys: bool = True) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FETCHER_", "SALESHANDY_", "ACME_", "GLOBEX_", "INITECH_"))
    }
    base["FETCHER_POSTGRES_DSN"] = dsn
    base["FETCHER_BROKER_URL"] = REDIS_URL
    if keys:
        base.update({var: key for _, var, key in WORKSPACES})
    return base


async def fetcher(args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "fetcher", *args], env=environ, check=False
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


class Workers:
    """`fetcher worker` subprocesses, each stopped by its PID."""

    def __init__(self, environ: dict[str, str], log_dir: Path) -> None:
        self.environ = environ
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Any] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{own_name('worker')}.log").open("wb")
        self.files.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetcher", "worker", "--threads", "2",
             "--heartbeat-timeout", HEARTBEAT_S, "--log-level", "info", *extra],
            env=self.environ, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def stop_all(self) -> None:
        """SIGTERM each, and wait for it (SIGKILL after 30 s) without blocking the loop.

        The simulator runs on this event loop: a worker stopped with a page in
        hand finishes it first, and a blocking wait would leave that page's
        request unanswered until the worker's own timeout, past the 30 s.
        """
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                await exited(proc)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                await exited(proc)
        for file in self.files:
            file.close()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


async def exited(proc: subprocess.Popen[bytes]) -> int:
    """``proc.wait(timeout=30)`` in a thread: the simulator on this loop goes on answering."""
    return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30))


@pytest.fixture
def workers_dir(tmp_path: Path) -> Path:
    path = tmp_path / "workers"
    path.mkdir()
    return path


async def enqueue(config: Path, environ: dict[str, str], jobs: list[str], job_id: str) -> str:
    jobs.append(job_id)
    result = await fetcher(["enqueue", "--config", str(config), "--job-id", job_id], environ)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def status(job_id: str, environ: dict[str, str], *extra: str) -> tuple[int, dict[str, Any]]:
    result = await fetcher(["status", job_id, "--json", *extra], environ)
    assert result.returncode in (0, 4, 6), result.stderr
    return result.returncode, json.loads(result.stdout)


@dataclasses.dataclass
class Job:
    sim: RunningSimulator
    config: Path
    environ: dict[str, str]
    job: str
    workers: Workers
    enqueued: str


@asynccontextmanager
async def job_with_workers(
    pg: tuple[str, str, list[str]], tmp_path: Path, workers_dir: Path, *, days: int = 2
) -> AsyncIterator[Job]:
    """A simulator, the job enqueued, and workers (none started) stopped at the end."""
    dsn, table, jobs = pg
    async with serve(sim_config()) as sim:
        config = write_job(tmp_path / "job.toml", sim, table, days=days)
        environ = env(dsn)
        job = own_name("job")
        enqueued = await enqueue(config, environ, jobs, job)
        workers = Workers(environ, workers_dir)
        try:
            yield Job(sim, config, environ, job, workers, enqueued)
        finally:
            await workers.stop_all()


async def committed_pages(run: Job) -> dict[tuple[str, int], int]:
    """The pages the ledger has committed, with the server's answers to each so far.

    Keyed by (the simulator's query key, page); an answer more than once is a client that
    gave up on a slow answer and asked again, before the page was committed.
    """
    async with Ledger(run.environ["FETCHER_POSTGRES_DSN"]) as ledger:
        specs = {
            u["unit_id"]: QuerySpec.model_validate(json.loads(u["spec"]))
            for u in await ledger.units(run.job)
        }
        rows = await ledger.connection.fetch(
            "SELECT unit_id, page FROM fetcher.page_checkpoints WHERE job_id = $1", run.job
        )
    answered = answers(run.sim)
    pages = [(run.sim.query_key(specs[r["unit_id"]].body(1)), r["page"]) for r in rows]
    return {page: answered[page] for page in pages}


def answers(sim: RunningSimulator) -> dict[tuple[str, int], int]:
    return {(p["query"], p["page"]): p["successes"] for p in sim.stats.snapshot()["pages"]}


def assert_not_fetched_again(sim: RunningSimulator, committed: dict[tuple[str, int], int]) -> None:
    """A page committed before a worker stopped was not asked for again after it.

    The server counts answers per query and page; each workspace asks its own queries.
    """
    assert committed
    now = answers(sim)
    again = {page: (then, now[page]) for page, then in committed.items() if now[page] != then}
    assert not again, again


async def poll_until(
    done: Callable[[dict[str, Any]], bool], job: str, environ: dict[str, str]
) -> None:
    """Read `fetcher status --json` until ``done`` says so (at most 30 s)."""
    with anyio.fail_after(30):
        while True:
            if done((await status(job, environ))[1]):
                return
            await anyio.sleep(0.1)


async def assert_exact(sim: RunningSimulator, dsn: str, table: str, days: int = 2) -> None:
    """One row per workspace x day x type x user, each with the simulator's own counts."""
    rows = await read_rows(dsn, table)
    assert len(rows) == days * ROWS_PER_DAY
    keys = {(r["workspace"], r["window_start"], r["type"], r["user_id"]) for r in rows}
    assert len(keys) == len(rows)
    by_key = {
        (r["workspace"], r["window_start"].date().day, r["type"], r["user_id"]): r for r in rows
    }
    for day in range(1, days + 1):
        for report in ("prospect", "email"):
            start = dt.datetime(2024, 3, day, tzinfo=dt.UTC)
            end = start.replace(hour=23, minute=59, second=59, microsecond=999000)
            for workspace, _, _ in WORKSPACES:
                users = tuple(users_of(sim, workspace))
                spec = QuerySpec(user_ids=users, start=start, end=end, type=report)
                for expected in sim.expected_rows(spec.body(1)):
                    row = by_key[(workspace, day, report, expected["userId"])]
                    assert row["replied"] == expected["replied"]


def assert_windows_kept(sim: RunningSimulator) -> None:
    rate = sim.stats.snapshot()["rate"]
    for key in rate["keys"]:
        assert 0 < key["max_in_window"] <= key["limit"], rate


async def test_workers_export_every_workspace_exactly_within_each_keys_window(
    redis_db: str, pg: tuple[str, str, list[str]], tmp_path: Path, workers_dir: Path
) -> None:
    async with job_with_workers(pg, tmp_path, workers_dir) as run:
        assert run.enqueued.strip() == f"job {run.job}: 12 units, 12 sent"
        # Keys never travel: not in the messages, not in the ledger.
        client = redis.Redis.from_url(REDIS_URL)
        messages = "".join(map(str, client.hvals("dramatiq:fetcher.msgs")))
        client.close()
        assert messages.count(run.job) == 12
        async with Ledger(pg[0]) as ledger:
            recorded = repr(await ledger.job(run.job)) + repr(await ledger.units(run.job))
        for key in (KEY_A, KEY_B, KEY_C):
            assert key not in messages and key not in recorded
        run.workers.start()
        run.workers.start()
        code, state = await status(run.job, run.environ, "--wait", "--timeout", "60")
        assert code == 0, run.workers.logs()
        assert list(state) == ["job", "units", "pages", "records", "failed"]
        assert state["units"] == {"done": 12, "running": 0, "queued": 0, "failed": 0}
        assert state["records"] == 2 * ROWS_PER_DAY and state["failed"] == []
        await assert_exact(run.sim, pg[0], pg[1])
        assert_windows_kept(run.sim)
        # A second enqueue of a complete job sends nothing and says so.
        args = ["enqueue", "--config", str(run.config), "--job-id", run.job]
        again = await fetcher(args, run.environ)
        assert again.returncode == 0
        assert "complete" in again.stdout and "nothing sent" in again.stdout
        for text in (run.enqueued, again.stdout, again.stderr, run.workers.logs()):
            assert KEY_A not in text and KEY_B not in text and KEY_C not in text


async def test_a_worker_killed_mid_job_and_a_new_one_finish_it_exactly(
    redis_db: str, pg: tuple[str, str, list[str]], tmp_path: Path, workers_dir: Path
) -> None:
    async with job_with_workers(pg, tmp_path, workers_dir, days=3) as run:
        first = run.workers.start()
        await poll_until(lambda state: state["pages"] >= 6, run.job, run.environ)
        os.kill(first.pid, signal.SIGKILL)
        await exited(first)
        _, mid = await status(run.job, run.environ)
        assert mid["units"]["done"] < 18  # killed mid-job
        committed = await committed_pages(run)
        run.workers.start()
        code, state = await status(run.job, run.environ, "--wait", "--timeout", "60")
        assert code == 0, run.workers.logs()
        assert state["units"]["done"] == 18
        await assert_exact(run.sim, pg[0], pg[1], days=3)
        assert_not_fetched_again(run.sim, committed)
        assert_windows_kept(run.sim)


async def test_a_unit_sent_again_by_hand_changes_nothing(
    redis_db: str, pg: tuple[str, str, list[str]], tmp_path: Path, workers_dir: Path
) -> None:
    dsn, table, _ = pg
    async with job_with_workers(pg, tmp_path, workers_dir) as run:
        run.workers.start()
        assert (await status(run.job, run.environ, "--wait", "--timeout", "60"))[0] == 0
        before, requests = await read_rows(dsn, table), run.sim.stats.requests
        async with Ledger(dsn) as ledger:
            unit_ids = [u["unit_id"] for u in await ledger.units(run.job)]
        broker = redis_broker(REDIS_URL)
        send_units(broker, run.job, unit_ids[:3] * 2)
        broker.close()
        client = redis.Redis.from_url(REDIS_URL)
        with anyio.fail_after(20):
            while True:  # the worker takes the messages; none is left in Redis
                pending = client.llen("dramatiq:fetcher") + client.hlen("dramatiq:fetcher.msgs")
                if not pending:
                    break
                await anyio.sleep(0.1)
        client.close()
        assert await read_rows(dsn, table) == before
        assert run.sim.stats.requests == requests
        code, state = await status(run.job, run.environ)
        assert code == 0 and state["units"]["done"] == 12


async def test_after_redis_loses_its_queue_enqueue_sends_exactly_what_is_not_done(
    redis_db: str, pg: tuple[str, str, list[str]], tmp_path: Path, workers_dir: Path
) -> None:
    async with job_with_workers(pg, tmp_path, workers_dir, days=3) as run:
        worker = run.workers.start()
        await poll_until(lambda state: state["units"]["done"] >= 3, run.job, run.environ)
        os.kill(worker.pid, signal.SIGTERM)  # it commits its page and sends its units back
        await exited(worker)
        forget_the_queue()  # Redis keeps nothing on disk here, and restarted
        committed = await committed_pages(run)
        code, state = await status(run.job, run.environ)
        assert code == 6
        not_done = 18 - state["units"]["done"]
        assert 0 < not_done < 18
        args = ["enqueue", "--config", str(run.config), "--job-id", run.job]
        out = await fetcher(args, run.environ)
        assert out.returncode == 0, out.stderr
        assert f"18 units, {not_done} sent" in out.stdout
        run.workers.start()
        code, state = await status(run.job, run.environ, "--wait", "--timeout", "60")
        assert code == 0, run.workers.logs()
        await assert_exact(run.sim, pg[0], pg[1], days=3)
        assert_not_fetched_again(run.sim, committed)


async def test_failures_a_refused_key_and_a_unit_out_of_attempts(
    redis_db: str, pg: tuple[str, str, list[str]], tmp_path: Path, workers_dir: Path
) -> None:
    """Initech's key is refused by the server: its units fail at once; fixed, just they run."""
    dsn, table, jobs = pg
    async with serve(sim_config(api_keys=(KEY_A, KEY_B, "another-key"))) as sim:
        config = write_job(tmp_path / "job.toml", sim, table)
        config.write_text("unit_attempts = 2\n" + config.read_text())
        environ = env(dsn)
        job = own_name("job")
        # The team list of initech is asked for at enqueue: with a refused key, exit 3.
        refused = await fetcher(["enqueue", "--config", str(config), "--job-id", job], environ)
        assert refused.returncode == 3, refused.stderr
        environ["INITECH_KEY"] = "another-key"  # the enqueuer's key is good; the workers' is not
        await enqueue(config, environ, jobs, job)
        worker_env = {**environ, "INITECH_KEY": KEY_C}
        workers = Workers(worker_env, workers_dir)
        try:
            workers.start()
            code, state = await status(job, environ, "--wait", "--timeout", "60")
        finally:
            await workers.stop_all()
        assert code == 4, workers.logs()
        assert state["units"] == {"done": 8, "running": 0, "queued": 0, "failed": 4}
        assert {f["unit"].split("/")[0] for f in state["failed"]} == {"initech"}
        async with Ledger(dsn) as ledger:
            initech = [u for u in await ledger.units(job) if u["workspace"] == "initech"]
        assert sum(u["deliveries"] for u in initech) <= 2  # the others were failed untried
        assert KEY_C not in json.dumps(state) and KEY_C not in workers.logs()
        # Fix the worker's key and enqueue again: just the failed units run.
        workers = Workers({**environ}, workers_dir)
        again = await fetcher(["enqueue", "--config", str(config), "--job-id", job], environ)
        assert "12 units, 4 sent" in again.stdout, again.stderr
        try:
            workers.start()
            code, state = await status(job, environ, "--wait", "--timeout", "60")
        finally:
            await workers.stop_all()
        assert code == 0, workers.logs()
        await assert_exact(sim, dsn, table)


# --- the command line's contract ----------------------------------------------------------------


async def test_cli_errors_and_exit_codes(
    redis_db: str, pg: tuple[str, str, list[str]], tmp_path: Path
) -> None:
    dsn, table, jobs = pg
    async with serve(sim_config()) as sim:
        config = write_job(tmp_path / "job.toml", sim, table)
        environ = env(dsn)
        file_job = tmp_path / "file.toml"
        file_job.write_text(
            config.read_text().replace('sink = "postgres"', f'out = "{tmp_path / "x.jsonl"}"')
        )
        result = await fetcher(["enqueue", "--config", str(file_job)], environ)
        assert result.returncode == 2
        assert "--sink" in result.stderr and "PostgreSQL only" in result.stderr
        no_redis = {**environ, "FETCHER_BROKER_URL": "redis://127.0.0.1:9/0"}
        result = await fetcher(["enqueue", "--config", str(config)], no_redis)
        assert result.returncode == 2 and "cannot reach the broker" in result.stderr
        result = await fetcher(["status", "no-such-job"], environ)
        assert result.returncode == 2 and "no job 'no-such-job'" in result.stderr
        no_dsn = {k: v for k, v in environ.items() if k != "FETCHER_POSTGRES_DSN"}
        result = await fetcher(["worker"], no_dsn)
        assert result.returncode == 2 and "FETCHER_POSTGRES_DSN" in result.stderr
        job = own_name("job")
        await enqueue(config, environ, jobs, job)
        result = await fetcher(["status", job, "--wait", "--timeout", "0.5"], environ)
        assert result.returncode == 6  # nobody works: still queued at the timeout
        assert result.stdout.startswith(f"job {job}: 0 done, 0 running, 12 queued, 0 failed")
        assert sim.stats.requests == 1  # initech's team list, and nothing else


async def test_sigterm_commits_the_page_in_hand_and_sends_the_rest_back(
    redis_db: str, pg: tuple[str, str, list[str]], tmp_path: Path, workers_dir: Path
) -> None:
    """`fetcher worker --processes 2` stopped by SIGTERM: no unit left running, all resumable."""
    async with job_with_workers(pg, tmp_path, workers_dir, days=3) as run:
        parent = run.workers.start("--processes", "2")
        await poll_until(lambda state: state["pages"] >= 10, run.job, run.environ)
        os.kill(parent.pid, signal.SIGTERM)
        assert await exited(parent) == 0, run.workers.logs()
        _, mid = await status(run.job, run.environ)
        assert mid["units"]["running"] == 0  # every unit in hand went back to the queue
        assert mid["units"]["done"] < 18
        client = redis.Redis.from_url(REDIS_URL)
        queued = client.llen("dramatiq:fetcher")
        client.close()
        assert queued == mid["units"]["queued"]  # its message is on the queue again
        committed = await committed_pages(run)
        assert len(committed) == mid["pages"]
        run.workers.start()
        code, _ = await status(run.job, run.environ, "--wait", "--timeout", "60")
        assert code == 0, run.workers.logs()
        await assert_exact(run.sim, pg[0], pg[1], days=3)
        assert_not_fetched_again(run.sim, committed)
