"""--shared-limiter when its Redis goes away mid-run: the export carries on, saying so once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from fetcher.simulator import SimulatorConfig, serve
from tests.integration import KEY, assert_same_rows, read_jsonl, spec_for
from tests.test_check import closed_port

REDIS_SERVER = "/usr/bin/redis-server"
WARNING = "shared limiter unreachable"
PAGES = 40
KILL_AFTER_REQUESTS = 10


def require_redis_server() -> str:
    """The redis-server binary; skip without one, or fail under CI=true."""
    found = REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else shutil.which("redis-server")
    if found:
        return found
    message = f"no redis-server at {REDIS_SERVER} or on PATH"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires Redis: {message}", pytrace=False)
    pytest.skip(message)


async def wait_for_ping(port: int, server: Process) -> None:
    """Until the new server answers PING (fails if it exits first or takes over 10 s)."""
    from redis.asyncio import Redis  # noqa: PLC0415
    from redis.exceptions import RedisError  # noqa: PLC0415

    with anyio.fail_after(10):
        while True:
            assert server.returncode is None, f"redis-server exited with {server.returncode}"
            client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
            try:
                if await client.ping():
                    return
            except (RedisError, OSError):
                pass
            finally:
                await client.aclose()
            await anyio.sleep(0.05)


def stop(server: Process) -> None:
    """SIGKILL the server by its PID, unless it is gone already."""
    if server.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGKILL)


async def test_redis_stopped_mid_run_the_export_finishes_exactly_and_warns_once(
    tmp_path: Path,
) -> None:
    """Redis dies while an export shares its limiter: exit 0, exact output, one warning.

    A user relies on a shared Redis that fails mid-run (restarted, out of
    memory, network cut) not failing their export: it goes on with its own
    local limiter, writes every row exactly once, says once that the shared
    limiter is unreachable (not once per request), and never shows the API key.
    """
    binary = require_redis_server()
    port = closed_port()
    config = SimulatorConfig(
        seed=5,
        team_size=PAGES * 10,
        rate_limit=10,
        rate_window_s=1.0,
        rate_window_mode="aligned",
        reset_format="seconds",
        rate_count_on="answer",
        latency_ms=25,
    )
    command = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
    server = await anyio.open_process(
        [*command, "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await wait_for_ping(port, server)
        async with serve(config) as sim:
            out, report = tmp_path / "stats.jsonl", tmp_path / "report.json"
            args = [
                sys.executable,
                "-m",
                "fetcher",
                "export",
                "--base-url",
                sim.base_url,
                "--users",
                ",".join(sim.user_ids),
                "--start",
                "2024-01-01",
                "--end",
                "2024-01-31",
                "--timezone",
                "UTC",
                "--type",
                "prospect",
                "--page-size",
                "10",
                "--out",
                str(out),
                "--report",
                str(report),
                "--shared-limiter",
                f"redis://127.0.0.1:{port}/0",
                "--log-format",
                "json",
                "--log-level",
                "info",
            ]
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))
            }
            env["SALESHANDY_API_KEY"] = KEY
            results: list[subprocess.CompletedProcess[bytes]] = []

            async def export() -> None:
                results.append(await anyio.run_process(args, env=env, check=False))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(export)
                    while sim.stats.requests < KILL_AFTER_REQUESTS and not results:  # noqa: ASYNC110
                        await anyio.sleep(0.01)  # polling the counters of a live server
                    killed_at, still_running = sim.stats.requests, not results
                    stop(server)
                    await server.wait()
            expected = sim.expected_rows(spec_for(sim).body(1))
    finally:
        stop(server)
        with anyio.move_on_after(5, shield=True):
            await server.aclose()  # waits for it to exit
    [result] = results
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    # Killed mid-run: some pages were still to be fetched when Redis went away.
    assert still_running and KILL_AFTER_REQUESTS <= killed_at < PAGES
    assert_same_rows(read_jsonl(out), expected)
    assert stderr.count(WARNING) == 1, stderr
    events: list[dict[str, Any]] = [
        json.loads(line) for line in stderr.splitlines() if line.startswith("{")
    ]
    [warning] = [e for e in events if WARNING in str(e.get("event"))]
    assert warning.get("level") == "warning"
    for text in (stdout, stderr, report.read_text(), out.read_text()):
        assert KEY not in text
