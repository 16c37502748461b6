"""(l) many workers: 12 keys x 7 daily slices x 2 types over 1, 2 and 4 worker processes.

The simulator serves twelve keys, key ``k`` limited to ``6 + k`` requests per
1 s window (6 to 17; 138 a second in all), 20 ms latency. The job has one
workspace per key; workspace ``k`` lists ``5 * (6 + k)`` users at page size 5,
so each of its 14 units (7 days x 2 report types) has ``6 + k`` pages and
every key has the same 14 windows of work: a perfect run keeps every key at
its limit until the end, and the whole job's throughput is the sum of the
limits.

Contenders, each against the reset simulator, each writing its own
PostgreSQL table:

* ``fetcher worker --processes N --threads 4`` for N = 1, 2, 4 (started idle,
  then ``fetcher enqueue``; done when ``fetcher status --wait`` returns);
* ``fetcher export --config`` of the same job in one process (one limiter per
  key, no shared limiter).

Figures, from the simulator's event log (arrival times): ``span_s``, first to
last request; ``ideal_s``, what the windows allow (each key's last window
opens ``ceil(requests / limit) - 1`` windows after its first); throughput =
requests / span in requests per second, and as a share of the summed limits
(``vs_sum``, which the windows' edges favour slightly: 14 windows of work fit
in 13 s and a bit); utilisation = ideal / span (the edge-free figure; target
0.85 with 4 workers). Every run's table is checked: one row per workspace x
day x type x user, none missing, none twice. ``wall_s`` counts from enqueue
(or the export's start) to ``status --wait`` returning (or the export's end).

Needs Redis at 127.0.0.1:6379 (database 11 is used and its Dramatiq keys
deleted after) and PostgreSQL (``FETCHER_TEST_POSTGRES_DSN`` or
``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks._harness import Simulator, emit_json, print_table, simulator, verdict

KEYS: Final = 12
DAYS: Final = 7
PAGE_SIZE: Final = 5
LATENCY_MS: Final = 20
THREADS: Final = 4
WORKERS: Final = (1, 2, 4)
TARGET: Final = 0.85
REDIS_URL: Final = "redis://127.0.0.1:6379/11"
DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/test"


def limits(keys: int) -> list[int]:
    return [6 + k for k in range(keys)]


def key_of(k: int) -> str:
    return f"bench-key-{k:02d}"


def write_job(path: Path, sim: Simulator, table: str, *, keys: int, days: int) -> Path:
    parts = [
        'start = "2024-01-01"',
        f'end = "2024-01-{days:02d}"',
        'slice = "day"',
        'type = ["prospect", "email"]',
        f"page_size = {PAGE_SIZE}",
        'sink = "postgres"',
        f'table = "{table}"',
        'log_level = "warning"',
    ]
    for k, limit in enumerate(limits(keys)):
        users = ", ".join(f'"{u}"' for u in sim.user_ids[: PAGE_SIZE * limit])
        parts += [
            "",
            "[[workspaces]]",
            f'name = "ws{k:02d}"',
            f'api_key_env = "BENCH_KEY_{k:02d}"',
            f'base_url = "{sim.base_url}"',
            f"users = [{users}]",
        ]
    path.write_text("\n".join(parts) + "\n")
    return path


def bench_environ(dsn: str, keys: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
    env |= {f"BENCH_KEY_{k:02d}": key_of(k) for k in range(keys)}
    return env | {"FETCHER_POSTGRES_DSN": dsn, "FETCHER_BROKER_URL": REDIS_URL}


def fetcher(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fetcher", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def traffic(sim: Simulator) -> tuple[int, int, float]:
    """(admitted requests, refusals, first-to-last arrival in seconds) since the reset."""
    events = sim.stats(events=True)["events"]
    ok = [e for e in events if e["kind"] == "ok" and e["page"] is not None]
    refused = sum(1 for e in events if e["kind"] == "rate_limited")
    times = [e["t"] for e in events]
    return len(ok), refused, (max(times) - min(times)) if times else 0.0


def ideal_s(keys: int, days: int) -> float:
    """Every key's windows filled the moment they open: its last opens after the others."""
    windows = max(math.ceil(2 * days * limit / limit) for limit in limits(keys))
    return float(windows - 1) + LATENCY_MS / 1000


def count_rows(dsn: str, table: str) -> tuple[int, int]:
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    async def count() -> tuple[int, int]:
        connection = await asyncpg.connect(dsn)
        try:
            row = await connection.fetchrow(
                f"SELECT count(*) AS n, count(DISTINCT (workspace, window_start, type, user_id)) "
                f'AS d FROM "{table}"'
            )
            assert row is not None
            return int(row["n"]), int(row["d"])
        finally:
            await connection.close()

    return asyncio.run(count())


def cleanup(dsn: str, tables: list[str], jobs: list[str]) -> None:
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415
    import redis  # noqa: PLC0415

    async def drop() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            for table in tables:
                await connection.execute(f'DROP TABLE IF EXISTS "{table}"')
            if await connection.fetchval("SELECT to_regclass('fetcher.jobs')") is not None:
                await connection.execute("DELETE FROM fetcher.jobs WHERE job_id = ANY($1)", jobs)
        finally:
            await connection.close()

    asyncio.run(drop())
    client = redis.Redis.from_url(REDIS_URL)
    names = list(client.scan_iter("dramatiq:*"))
    if names:
        client.delete(*names)
    client.close()


def run_workers(
    sim: Simulator,
    tmp: Path,
    dsn: str,
    processes: int,
    *,
    keys: int,
    days: int,
    remember: Callable[[str, str], None],
) -> dict[str, Any]:
    table, job = f"bench_dist_{uuid.uuid4().hex[:10]}", f"bench-{uuid.uuid4().hex[:10]}"
    remember(table, job)
    config = write_job(tmp / f"job-{processes}.toml", sim, table, keys=keys, days=days)
    env = bench_environ(dsn, keys)
    sim.reset()
    log = (tmp / f"workers-{processes}.log").open("wb")
    workers = subprocess.Popen(
        [sys.executable, "-m", "fetcher", "worker", "--processes", str(processes),
         "--threads", str(THREADS), "--heartbeat-timeout", "10"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(1.5)  # let the workers connect before the first message
        started = time.perf_counter()
        enqueued = fetcher(["enqueue", "--config", str(config), "--job-id", job], env)
        if enqueued.returncode != 0:
            raise RuntimeError(f"enqueue failed: {enqueued.stderr}")
        status = fetcher(["status", job, "--wait", "--timeout", "600"], env)
        wall = time.perf_counter() - started
    finally:
        os.kill(workers.pid, signal.SIGTERM)
        workers.wait(timeout=60)
        log.close()
    name = f"{processes} worker process(es) x {THREADS} threads"
    return figures(name, status.stdout, status.returncode, sim, dsn, table, wall)


def figures(
    name: str, said: str, code: int, sim: Simulator, dsn: str, table: str, wall: float
) -> dict[str, Any]:
    """One contender's run: the server's traffic and the table's rows."""
    ok, refused, span = traffic(sim)
    rows, distinct = count_rows(dsn, table)
    return {
        "name": name,
        "status": said.strip()[-200:],
        "exit": code,
        "requests": ok,
        "refused": refused,
        "span_s": span,
        "wall_s": wall,
        "rows": rows,
        "distinct": distinct,
    }


def run_export(
    sim: Simulator,
    tmp: Path,
    dsn: str,
    *,
    keys: int,
    days: int,
    remember: Callable[[str, str], None],
) -> dict[str, Any]:
    table = f"bench_dist_{uuid.uuid4().hex[:10]}"
    remember(table, "")
    config = write_job(tmp / "export.toml", sim, table, keys=keys, days=days)
    env = bench_environ(dsn, keys)
    sim.reset()
    started = time.perf_counter()
    result = fetcher(["export", "--config", str(config), "--quiet"], env)
    wall = time.perf_counter() - started
    return figures(
        "one fetcher export process", result.stderr, result.returncode, sim, dsn, table, wall
    )


def scenario_l(sizes: Any, tmp: Path, *, quick: bool = False, **_: Any) -> dict[str, Any]:
    """(l) 1, 2 and 4 worker processes, and one export process, on 12 keys' summed limits."""
    del sizes
    keys, days = (4, 2) if quick else (KEYS, DAYS)
    tmp.mkdir(parents=True, exist_ok=True)
    dsn = os.environ.get("FETCHER_TEST_POSTGRES_DSN") or DEFAULT_DSN
    tables: list[str] = []
    jobs: list[str] = []

    def remember(table: str, job: str) -> None:
        tables.append(table)
        if job:
            jobs.append(job)

    team = PAGE_SIZE * max(limits(keys))
    server = [
        "--latency-ms", str(LATENCY_MS),
        "--rate-limit", str(max(limits(keys))), "--rate-window", "1",
        "--key-rate-limits", ",".join(map(str, limits(keys))),
    ]  # fmt: skip
    for k in range(keys):
        server += ["--api-key", key_of(k)]
    runs: list[dict[str, Any]] = []
    try:
        with simulator(team_size=team, extra=server) as sim:
            runs.extend(
                run_workers(sim, tmp, dsn, processes, keys=keys, days=days, remember=remember)
                for processes in WORKERS
            )
            runs.append(run_export(sim, tmp, dsn, keys=keys, days=days, remember=remember))
    finally:
        cleanup(dsn, tables, jobs)
    total_limit = sum(limits(keys))
    ideal = ideal_s(keys, days)
    expected = sum(PAGE_SIZE * limit for limit in limits(keys)) * days * 2
    rows = []
    for run in runs:
        span = run["span_s"] or float("inf")
        run["throughput_rps"] = run["requests"] / span
        run["vs_sum"] = run["throughput_rps"] / total_limit
        run["utilisation"] = ideal / span
        run["complete"] = run["rows"] == run["distinct"] == expected and run["exit"] == 0
        rows.append(
            [
                run["name"], run["requests"], run["refused"], f"{run['span_s']:.2f}",
                f"{run['wall_s']:.2f}", f"{run['throughput_rps']:.1f}", f"{run['vs_sum']:.2f}",
                f"{run['utilisation']:.2f}", "yes" if run["complete"] else "NO",
            ]
        )  # fmt: skip
    four = next(r for r in runs if r["name"].startswith("4 "))
    print_table(
        f"(l) {keys} keys x {days} daily slices x 2 types; summed limits {total_limit}/s, "
        f"ideal {ideal:.2f} s; target utilisation >= {TARGET} with 4 workers: "
        f"{verdict(four['utilisation'] >= TARGET)}",
        ["contender", "requests", "429s", "span s", "wall s", "req/s", "vs sum", "util", "exact"],
        rows,
    )
    results = {
        "keys": keys,
        "days": days,
        "limits": limits(keys),
        "summed_limits_rps": total_limit,
        "ideal_s": ideal,
        "expected_rows": expected,
        "runs": runs,
        "target_utilisation": TARGET,
        "ok": four["utilisation"] >= TARGET and all(r["complete"] for r in runs),
    }
    emit_json("l_distributed", results)
    return results


SCENARIOS: Final[dict[str, Callable[..., dict[str, Any]]]] = {"l": scenario_l}
