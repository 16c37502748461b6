"""Several real `fetcher export` processes on one API key, with and without --shared-limiter.

Each process is a separate `python -m fetcher export` exporting its own users
against one simulator (one key, one rate limit). The simulator counts a hit when
it answers, so it admits what the processes send together and a window they
overran shows in ``max_arrived_in_window`` (admitted requests that arrived in
one window) instead of only as refusals.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from tests.integration import KEY, assert_same_rows, read_jsonl, spec_for

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Its own DB: nothing here is flushed, and the hash's name digests the simulator's
#: host:port, which is new for every simulator, so runs never share state.
REDIS = f"redis://{REDIS_HOST}:{REDIS_PORT}/14"

LIMIT = 10  # requests per 1 s window, for every process on the key together
PAGE_SIZE = 10
PAGES_PER_PROCESS = 30  # 300 users each: several windows even for one process


def config(processes: int) -> SimulatorConfig:
    return SimulatorConfig(
        seed=processes,
        team_size=processes * PAGES_PER_PROCESS * PAGE_SIZE,
        rate_limit=LIMIT,
        rate_window_s=1.0,
        rate_window_mode="aligned",
        reset_format="seconds",
        rate_count_on="answer",
        latency_ms=25,
    )


async def require_redis() -> None:
    """Return if the Redis on 127.0.0.1:6379 answers PING; else skip, or fail under CI=true."""
    from redis.asyncio import Redis  # noqa: PLC0415
    from redis.exceptions import RedisError  # noqa: PLC0415

    client = Redis(host=REDIS_HOST, port=REDIS_PORT, db=14, socket_connect_timeout=2)
    try:
        answered = bool(await client.ping())
        reason = "no PONG"
    except (RedisError, OSError) as exc:
        answered, reason = False, type(exc).__name__
    finally:
        await client.aclose()
    if answered:
        return
    message = f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer PING ({reason})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires Redis: {message}", pytrace=False)
    pytest.skip(message)


def export_args(sim: RunningSimulator, users_file: Path, out: Path) -> list[str]:
    return [
        "export",
        "--base-url",
        sim.base_url,
        "--users-file",
        str(users_file),
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-31",
        "--timezone",
        "UTC",
        "--type",
        "prospect",
        "--page-size",
        str(PAGE_SIZE),
        "--user-batch-size",
        "1000",
        "--out",
        str(out),
        "--quiet",
    ]


def env() -> dict[str, str]:
    """The test's environment without FETCHER_/SALESHANDY_ settings, plus the simulator's key."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
    clean["SALESHANDY_API_KEY"] = KEY
    return clean


#: One process's result, its output file and the users it exported.
Run = tuple[subprocess.CompletedProcess[bytes], Path, list[str]]


async def run_together(
    sim: RunningSimulator, tmp_path: Path, processes: int, *extra: str
) -> list[Run]:
    """Start one export per disjoint share of the team at once; wait for all of them."""
    shares = [sim.user_ids[i::processes] for i in range(processes)]
    runs: list[tuple[list[str], Path]] = []
    for i, users in enumerate(shares):
        users_file, out = tmp_path / f"users{i}.txt", tmp_path / f"out{i}.jsonl"
        users_file.write_text("\n".join(users) + "\n")
        runs.append(
            ([sys.executable, "-m", "fetcher", *export_args(sim, users_file, out), *extra], out)
        )
    results: dict[int, subprocess.CompletedProcess[bytes]] = {}

    async def one(i: int) -> None:
        results[i] = await anyio.run_process(runs[i][0], env=env(), check=False)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(processes):
                tg.start_soon(one, i)
    return [(results[i], runs[i][1], shares[i]) for i in range(processes)]


def assert_exact(sim: RunningSimulator, runs: list[Run]) -> None:
    for result, out, users in runs:
        stderr = result.stderr.decode()
        assert result.returncode == 0, stderr
        assert KEY not in stderr and KEY not in result.stdout.decode()
        expected = sim.expected_rows(spec_for(sim, user_ids=tuple(users)).body(1))
        assert len(expected) == PAGES_PER_PROCESS * PAGE_SIZE
        assert_same_rows(read_jsonl(out), expected)


@pytest.mark.parametrize("processes", [2, 4])
async def test_processes_sharing_a_limiter_never_overrun_the_window(
    tmp_path: Path, processes: int
) -> None:
    """With --shared-limiter, N exports on one key together stay within the key's limit.

    A user runs several exports at once (a nightly job and ad-hoc ones, or
    workers) on one key and relies on them sharing its budget: each writes
    exactly its users' rows and exits 0, no window ever gets more than the limit,
    and the server seldom has to refuse one of them.
    """
    await require_redis()
    async with serve(config(processes)) as sim:
        runs = await run_together(sim, tmp_path, processes, "--shared-limiter", REDIS)
        rate: dict[str, Any] = sim.stats.snapshot()["rate"]
        assert_exact(sim, runs)
    assert (rate["limit"], rate["window_s"], rate["mode"]) == (LIMIT, 1.0, "aligned")
    assert rate["admitted"] >= processes * PAGES_PER_PROCESS
    # Never more than the limit sent into a window: without --shared-limiter the same
    # run sends 20 into one (and 4 processes are refused 116 times). What the server
    # counted by its answers (max_in_window) may be more on a busy machine: a burst
    # sent before a window's end and answered after it counts in the next one,
    # which no client can see in headers computed on arrival.
    assert rate["max_arrived_in_window"] <= LIMIT, rate
    # Zero refusals is benchmark (h)'s target, and a quiet machine meets it. On a
    # busy one the simulator itself answers up to 0.1 s late, and a window can then
    # be refused whole once or twice and retried. Pinned here: at most two windows'
    # quota refused, the output exact.
    assert rate["refused"] <= 2 * LIMIT, rate


@pytest.mark.parametrize("processes", [2, 4])
async def test_processes_without_a_shared_limiter_still_export_exactly(
    tmp_path: Path, processes: int
) -> None:
    """Without --shared-limiter, N exports on one key each still write exactly their rows.

    The processes only see each other as a smaller ``remaining`` or a refusal;
    the user relies on every one of them still finishing with exit 0 and its
    complete, duplicate-free output (refusals are retried, not lost).
    """
    async with serve(config(processes)) as sim:
        # Uncoordinated, four processes can each be refused one page's default six
        # attempts in a row on a 10-a-second key (seen once in ~10 runs on a busy
        # machine): more attempts, as the README advises for a key shared without
        # --shared-limiter. What is pinned is that refusals are retried, not lost.
        runs = await run_together(sim, tmp_path, processes, "--max-attempts", "30")
        assert_exact(sim, runs)
