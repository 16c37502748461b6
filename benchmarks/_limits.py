"""Plumbing of the rate-limit scenarios (:mod:`benchmarks.bench_limits`).

Which fetcher runs (:class:`FetcherUnderTest`: this tree's, or another tree's by
``PYTHONPATH``), one ``fetcher export`` process or several started together
(:class:`Export`), the server's aligned windows and the ideal time they allow
(:func:`ideal_s`), and what the simulator's event log says about each window
(:class:`Traffic`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from benchmarks._harness import (
    Measured,
    Simulator,
    bench_env,
    fetcher_argv,
    jsonl_counts,
    measure,
)

PAGE_SIZE: Final = 10
#: Users per query (fetcher's default ``--user-batch-size``): 100 pages per query here.
BATCH: Final = 1000


# -- the fetcher under test ----------------------------------------------------------------------


@dataclass(frozen=True)
class FetcherUnderTest:
    """Which fetcher the ``fetcher export`` processes run.

    Args:
        root: a tree whose ``fetcher`` package is run instead of the installed one
            (``PYTHONPATH=root``); ``None``: the installed one (this tree, editable).
        launch_at: seconds into the server's window at which the processes are
            launched (``None``: at once, wherever the window is). A run's figures
            depend on where in a window it starts; this makes a start reproducible,
            e.g. to compare two trees on a late start. The first request arrives one
            interpreter start-up later (about 0.3-0.5 s).
    """

    root: Path | None = None
    launch_at: float | None = None

    def env(self) -> dict[str, str]:
        """The processes' environment: the simulator's key, and the tree's path if given."""
        return bench_env(PYTHONPATH=str(self.root)) if self.root is not None else bench_env()

    def run(self, args: Sequence[str], cwd: Path) -> Measured:
        """Run ``python -m fetcher ARGS`` in ``cwd`` to completion, measured.

        Never from the repository root: ``python -m`` puts the working directory first
        on ``sys.path``, ahead of ``PYTHONPATH``, and would import this tree's fetcher.
        """
        return measure(fetcher_argv(*args), env=self.env(), cwd=cwd)

    def wait_to_launch(self, sim: Simulator) -> None:
        """Sleep until :attr:`launch_at` seconds into the window of ``sim``'s server."""
        if self.launch_at is None:
            return
        windows = windows_of(sim.stats())
        now = time.time()
        time.sleep((windows.opening(now) + self.launch_at - now) % windows.window_s)

    def package(self) -> Path:
        """The directory of the ``fetcher`` package these processes import."""
        with tempfile.TemporaryDirectory() as cwd:
            found = subprocess.run(
                [sys.executable, "-c", "import fetcher; print(fetcher.__file__)"],
                env=self.env(), cwd=cwd, capture_output=True, text=True, check=True,
            )  # fmt: skip
        package = Path(found.stdout.strip()).parent
        if self.root is not None and not package.is_relative_to(self.root.resolve()):
            raise SystemExit(f"--fetcher-root {self.root}: the processes import {package}")
        return package

    @cached_property
    def label(self) -> str:
        """The package and its git revision, e.g. ``/work/main/fetcher (fdd2199)``."""
        package = self.package()

        def git(*args: str) -> str:
            done = subprocess.run(
                ["git", "-C", str(package), *args], capture_output=True, text=True, check=False
            )
            return done.stdout.strip()

        revision = git("rev-parse", "--short", "HEAD") or "no git revision"
        if git("status", "--porcelain", "--", "."):
            revision += ", with uncommitted changes"
        return f"{package} ({revision})"

    def has_option(self, option: str) -> bool:
        """Whether ``fetcher export --help`` lists ``option``."""
        with tempfile.TemporaryDirectory() as cwd:
            shown = self.run(["export", "--help"], Path(cwd))
        shown.check("fetcher export --help")
        return option in shown.stdout


# -- one export ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Export:
    """One ``fetcher export`` process, finished: measured, its run report, its output counted."""

    name: str
    measured: Measured
    report: dict[str, Any]
    expected: int
    records: int
    distinct: int

    @property
    def complete(self) -> bool:
        """Every expected row, each exactly once."""
        return self.records == self.expected == self.distinct

    @property
    def fetch_s(self) -> float:
        """The run report's ``duration_s``."""
        return float(self.report["duration_s"])

    @property
    def started(self) -> float:
        """The report's ``started_at``, epoch seconds."""
        return dt.datetime.fromisoformat(self.report["started_at"]).timestamp()

    @property
    def finished(self) -> float:
        """The report's ``finished_at``, epoch seconds."""
        return dt.datetime.fromisoformat(self.report["finished_at"]).timestamp()

    def figures(self) -> dict[str, Any]:
        """The run as JSON."""
        limits = self.report.get("rate_limit") or {}
        return {
            "name": self.name,
            "complete": self.complete,
            "records": self.records,
            "expected": self.expected,
            "fetch_s": round(self.fetch_s, 3),
            "wall_s": round(self.measured.wall_s, 3),
            "cpu_s": round(self.measured.cpu_s, 3),
            "requests": self.report["requests"],
            "refusals": limits.get("refusals"),
            "started_at": self.report["started_at"],
        }


def export_args(sim: Simulator, tmp: Path, name: str, users: Sequence[str]) -> list[str]:
    """``export`` of ``users`` over one day, page size 10: one query per 1,000 users."""
    users_file = tmp / f"{name}.users.txt"
    users_file.write_text("\n".join(users))
    return [
        "export", "--base-url", sim.base_url, "--users-file", str(users_file),
        "--start", "2024-01-01", "--end", "2024-01-01", "--timezone", "UTC",
        "--type", "prospect", "--page-size", str(PAGE_SIZE), "--user-batch-size", str(BATCH),
        "--out", str(tmp / f"{name}.jsonl"), "--report", str(tmp / f"{name}.report.json"),
        "--log-level", "warning",
    ]  # fmt: skip


def finish(name: str, tmp: Path, measured: Measured, users: int) -> Export:
    """Check the process, read its report and count its output."""
    measured.check(f"fetcher ({name})")
    report = json.loads((tmp / f"{name}.report.json").read_text())
    records, distinct = jsonl_counts(tmp / f"{name}.jsonl")
    return Export(name, measured, report, users, records, distinct)


def run_together(
    fetcher: FetcherUnderTest, sim: Simulator, tmp: Path, names: Sequence[str], *extra: str
) -> list[Export]:
    """Start one ``fetcher export`` per name at the same moment, each on its own users.

    Process ``n`` exports users ``[n * U, (n + 1) * U)`` of the team, ``U`` the team
    size over the number of names.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    each = len(sim.user_ids) // len(names)
    groups = [sim.user_ids[n * each : (n + 1) * each] for n in range(len(names))]
    argvs = [
        [*export_args(sim, tmp, name, users), *extra]
        for name, users in zip(names, groups, strict=True)
    ]
    ready = threading.Barrier(len(names))

    def one(args: list[str]) -> Measured:
        ready.wait()
        return fetcher.run(args, tmp)

    sim.reset()
    fetcher.wait_to_launch(sim)
    with ThreadPoolExecutor(len(names)) as pool:
        measured = list(pool.map(one, argvs))
    return [
        finish(name, tmp, m, len(users))
        for name, m, users in zip(names, measured, groups, strict=True)
    ]


# -- windows, the ideal, and the event log -------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """Fixed windows ``[phase + k*W, phase + (k+1)*W)`` on the wall clock, as the server has them.

    Args:
        window_s: the window's length W.
        phase_s: where windows start, modulo W (the stats' ``rate.phase_s``).
    """

    window_s: float
    phase_s: float

    def index(self, t: float) -> int:
        """The window containing epoch second ``t``."""
        return math.floor((t - self.phase_s) / self.window_s)

    def start(self, k: int) -> float:
        """When window ``k`` opens, epoch seconds."""
        return self.phase_s + k * self.window_s

    def opening(self, t: float) -> float:
        """When the window containing ``t`` opened."""
        return self.start(self.index(t))


def ideal_s(
    windows: Windows,
    *,
    start: float,
    pages: int,
    first: int,
    quota: int,
    latency_s: float,
    count_on: str = "arrival",
) -> float:
    """The least time from ``start`` in which ``quota`` requests per window get ``pages`` done.

    Page 1 of each of the ``first`` queries goes at ``start``, in the window then in
    force; the other pages may go once a page 1 is answered, one latency later. From
    then on each window's quota may go at once: what the page-1 requests left of the
    window in force then, and a whole quota the moment each later window opens. The
    ideal ends one latency after the window in which the last request goes opens (or
    after the page-1 answers, if the last request fits in that first window).

    With ``count_on="answer"`` a request counts in the window in force when it is
    answered, one latency after it is sent, as the simulator's ``--rate-count-on
    answer`` counts it: page 1 and the burst after its answer may then fall in
    different windows, and a burst answered after the first window's end counts
    in the next (it cannot be in the first: the server would count it there only
    by admitting more than its limit). Later windows' quotas go at their openings
    as on arrival, counted within them.

    Args:
        windows: the server's windows.
        start: the run's start, epoch seconds (the report's ``started_at``).
        pages: requests in all, page 1 of each query included.
        first: page-1 requests (queries); at most ``quota``.
        quota: requests a window admits for this client.
        latency_s: the server's latency, one round trip.
    """
    if not 0 < first <= quota:
        raise ValueError(f"first={first} must be between 1 and the quota {quota}")
    if pages <= first:
        return latency_s
    lag = latency_s if count_on == "answer" else 0.0  # from a send to its count
    t = start + latency_s  # page 1 answered: the rest may go
    k = windows.index(t + lag)
    used = first if k == windows.index(start + lag) else 0
    left = pages - first
    while True:
        left -= min(left, quota - used)
        if left == 0:
            return t + latency_s - start
        k += 1
        t, used = windows.start(k), 0


@dataclass(frozen=True)
class WindowCount:
    """The requests that arrived in one server window.

    Attributes:
        index: the window (see :class:`Windows`).
        ok: answered 200.
        refused: refused by the rate limit.
        first_s: from the window's opening to its first arrival (``None``: none arrived).
    """

    index: int
    ok: int
    refused: int
    first_s: float | None


@dataclass(frozen=True)
class Traffic:
    """What the simulator saw of one run (one ``stats?events=1`` snapshot)."""

    requests: int
    refused: int
    max_in_window: int
    foreign_admitted: int
    foreign_refused: int
    windows: list[WindowCount]

    @classmethod
    def of(cls, stats: dict[str, Any], windows: Windows, offset: float) -> Traffic:
        """Read the stats; ``offset`` turns the events' ``time.monotonic()`` into epoch seconds."""
        rate = stats["rate"]
        arrivals = sorted(
            (event["t"] + offset, event["status"] == 200, event["kind"] == "rate_limited")
            for event in stats["events"]
            if event["page"] is not None
        )
        counts: list[WindowCount] = []
        if arrivals:
            by_window: dict[int, list[tuple[float, bool, bool]]] = {}
            for arrival in arrivals:
                by_window.setdefault(windows.index(arrival[0]), []).append(arrival)
            for k in range(min(by_window), max(by_window) + 1):
                seen = by_window.get(k, [])
                counts.append(
                    WindowCount(
                        index=k,
                        ok=sum(ok for _, ok, _ in seen),
                        refused=sum(refused for _, _, refused in seen),
                        first_s=seen[0][0] - windows.start(k) if seen else None,
                    )
                )
        return cls(
            requests=stats["requests"],
            refused=rate["refused"],
            max_in_window=rate["max_in_window"],
            foreign_admitted=rate["foreign_admitted"],
            foreign_refused=rate["foreign_refused"],
            windows=counts,
        )

    @property
    def refused_share(self) -> float:
        """Refused over all requests of the real clients."""
        return self.refused / self.requests if self.requests else 0.0

    @property
    def idle_windows(self) -> int:
        """Windows between the run's first and last request in which nothing was admitted."""
        return sum(w.ok == 0 for w in self.windows[1:-1])

    @property
    def lag_s(self) -> float | None:
        """The median time from a window's opening to its first request, the first window aside."""
        lags = [w.first_s for w in self.windows[1:] if w.first_s is not None]
        return statistics.median(lags) if lags else None

    def figures(self) -> dict[str, Any]:
        """The traffic as JSON: totals, and per window ``[k - first k, ok, refused, first ms]``."""
        k0 = self.windows[0].index if self.windows else 0
        return {
            "requests": self.requests,
            "refused": self.refused,
            "refused_share": round(self.refused_share, 4),
            "max_in_window": self.max_in_window,
            "foreign_admitted": self.foreign_admitted,
            "foreign_refused": self.foreign_refused,
            "idle_windows": self.idle_windows,
            "lag_ms": _ms(self.lag_s),
            "windows": [[w.index - k0, w.ok, w.refused, _ms(w.first_s)] for w in self.windows],
        }


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(1000 * seconds)


def clock_offset() -> float:
    """Epoch seconds minus ``time.monotonic()``: the simulator's events carry the latter.

    Linux's monotonic clock is one clock for every process, so the simulator's readings
    and this process's agree.
    """
    return time.time() - time.monotonic()


def windows_of(stats: dict[str, Any]) -> Windows:
    """The server's windows, from its stats."""
    rate = stats["rate"]
    return Windows(float(rate["window_s"]), float(rate["phase_s"]))


def pages_for(users: int) -> tuple[int, int]:
    """(pages, queries) of an export of ``users`` at page size 10 in batches of 1,000."""
    full, rest = divmod(users, BATCH)
    pages = full * math.ceil(BATCH / PAGE_SIZE) + math.ceil(rest / PAGE_SIZE)
    return pages, full + (rest > 0)


def redis_answers(url: str) -> bool:
    """Whether a Redis at ``url`` answers ``PING``."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False
