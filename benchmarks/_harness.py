"""Shared benchmark plumbing: a simulator in its own process, timing, reporting.

The simulator runs as a separate process (``python -m fetcher.simulator``) so
that its CPU does not compete with the contender's event loop, and every
contender of a benchmark talks to the same server and dataset in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetcher.simulator import build_team

KEY = "sim-key"


@dataclass(frozen=True)
class Simulator:
    base_url: str
    user_ids: list[str]
    process: subprocess.Popen[str]

    def reset(self) -> None:
        """Zero the server's counters and rate-limit windows between contenders."""
        import urllib.request  # noqa: PLC0415

        request = urllib.request.Request(self.base_url + "/_simulator/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stats(self) -> dict[str, Any]:
        import urllib.request  # noqa: PLC0415

        with urllib.request.urlopen(self.base_url + "/_simulator/stats", timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
        return data


@contextmanager
def simulator(*, seed: int = 1, team_size: int, extra: Sequence[str] = ()) -> Iterator[Simulator]:
    """Start ``python -m fetcher.simulator`` on a free port; stop it afterwards."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fetcher.simulator",
            "--port",
            "0",
            "--seed",
            str(seed),
            "--team-size",
            str(team_size),
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"simulator did not start (said {base_url!r})")
        users = [member.user_id for member in build_team(seed, team_size)]
        yield Simulator(base_url, users, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_cli(
    args: Sequence[str], *, cwd: Path | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``python -m fetcher`` and return (wall seconds, result)."""
    env = dict(os.environ, SALESHANDY_API_KEY=KEY)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "fetcher", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    return time.perf_counter() - started, result


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def emit_json(name: str, results: dict[str, Any]) -> None:
    """One machine-readable line: ``BENCH {...}``."""
    print("BENCH " + json.dumps({"benchmark": name, "machine": machine(), **results}))
