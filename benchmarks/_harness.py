"""Shared benchmark plumbing: a simulator in its own process, measuring, reporting.

The simulator runs as a separate process (``python -m fetcher.simulator``) so
that its CPU does not compete with the contender's event loop, and every
contender of a benchmark talks to the same server and dataset in the same run.

Every contender runs as a process of its own too, measured by :func:`measure`:
wall time, CPU seconds and peak memory of that process alone (``os.wait4``
returns the child's own resource usage), with its RSS sampled as it runs.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

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

    def stats(self, *, events: bool = False) -> dict[str, Any]:
        """The server's counters (``GET /_simulator/stats``); ``events``: every request too."""
        import urllib.request  # noqa: PLC0415

        url = self.base_url + "/_simulator/stats" + ("?events=1" if events else "")
        with urllib.request.urlopen(url, timeout=10) as response:
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


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for a contender: the simulator's key, and no ``FETCHER_*`` leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHER_")}
    return env | {"SALESHANDY_API_KEY": KEY} | extra


def optional(module: str) -> Any:
    """Import an optional benchmark dependency (the ``bench`` extra), or ``None``.

    Imported by name so that type checking does not depend on which extras
    are installed (CI installs ``.[dev]`` only).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


@dataclass(frozen=True)
class Measured:
    """One process, measured.

    Attributes:
        wall_s: from start to exit.
        cpu_s: user plus system CPU seconds of the process (and any child it waited for).
        peak_rss_mb: its peak resident memory: the kernel's high-water mark of the
            process (``VmHWM``), read as it runs; without ``/proc``, the largest
            sampled RSS. (Not ``ru_maxrss``: a child started by vfork inherits the
            parent's high-water mark there.)
        sampled_peak_rss_mb: the largest RSS seen by psutil, sampled every
            ``sample_s`` (``None`` without psutil).
        samples: how many samples were taken.
    """

    argv: tuple[str, ...]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    sampled_peak_rss_mb: float | None
    samples: int
    stdout: str
    stderr: str

    def check(self, what: str) -> None:
        """Stop the benchmark if the process failed."""
        if self.returncode != 0:
            raise SystemExit(f"{what} failed ({self.returncode}): {self.stderr[-2000:]}")


@dataclass
class _Memory:
    """What the sampler saw, in bytes."""

    high_water: int = 0
    rss_peak: int | None = None
    samples: int = 0


def _high_water(pid: int) -> int | None:
    """The process's peak RSS so far (Linux ``VmHWM``), or ``None``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _sample_memory(pid: int, every_s: float, stop: threading.Event, seen: _Memory) -> None:
    psutil = optional("psutil")
    process = psutil.Process(pid) if psutil is not None else None
    gone = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied) if psutil else ()
    while not stop.is_set():
        high = _high_water(pid)
        if high is not None:
            seen.high_water = max(seen.high_water, high)
        if process is not None:
            try:
                rss = process.memory_info().rss
            except gone:
                return  # exited: what was seen until now stands
            seen.rss_peak = max(seen.rss_peak or 0, rss)
        seen.samples += 1
        stop.wait(every_s)


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    sample_s: float = 0.05,
) -> Measured:
    """Run ``argv`` to completion and measure it alone: wall, CPU, peak RSS.

    The process's output goes to temporary files (a pipe could fill and stall it).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        seen = _Memory()
        stop = threading.Event()
        sampler = threading.Thread(
            target=_sample_memory, args=(process.pid, sample_s, stop, seen), daemon=True
        )
        sampler.start()
        try:
            # wait4, not wait: it returns this child's own CPU time.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            stop.set()
            sampler.join()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    peak = seen.high_water or seen.rss_peak or 0
    return Measured(
        argv=tuple(argv),
        returncode=process.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=peak / 2**20,
        sampled_peak_rss_mb=None if seen.rss_peak is None else seen.rss_peak / 2**20,
        samples=seen.samples,
        stdout=stdout,
        stderr=stderr,
    )


def fetcher_argv(*args: str) -> list[str]:
    """``python -m fetcher ARGS`` with this interpreter."""
    return [sys.executable, "-m", "fetcher", *args]


def verdict(ok: bool) -> str:
    """How a target is shown in a table."""
    return "PASS" if ok else "FAIL"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


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


def jsonl_counts(path: Path) -> tuple[int, int]:
    """Lines in a JSONL output, and distinct (user, window) among them."""
    lines = 0
    keys: set[tuple[Any, Any]] = set()
    with path.open("rb") as file:
        for line in file:
            record = orjson.loads(line)
            keys.add((record.get("userId"), record.get("_window_start")))
            lines += 1
    return lines, len(keys)
