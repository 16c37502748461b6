"""Pages streamed to the sink: scenario (j) of ``python -m benchmarks.run``.

fetcher writes each page to the sink as it arrives; before, a query's pages were
held in memory until its last page was back, then written. Two figures show it,
each from real ``fetcher export`` processes to JSONL against ``python -m
fetcher.simulator`` in its own process, every output checked (one row per user,
none missing, none twice):

(j1) memory: ONE query of 1,000 pages (10,000 users, ``--user-batch-size 10000``,
     ``--page-size 10``, one window, one type) against ONE query of 100 pages
     (1,000 users, the same options), no latency; the peak RSS (``VmHWM``) of the
     fetcher process, the median of :data:`REPEATS` runs each. Target: the
     1,000-page query peaks within +20% of the 100-page one.
(j2) time to first page written: one query of 200 pages at 150 ms latency. The
     benchmark polls the output's ``.partial`` file (:func:`fetcher.sinks._common.
     partial_path`) every :data:`POLL_S` and notes when its first bytes appear (a
     JSONL file has no header: the first bytes are the first record). Reported
     from the process's start (interpreter start-up and imports included), from
     the first team-stats request the simulator received (its event log reads
     ``time.monotonic()``, one clock for every process on Linux), in round trips
     (the simulator's latency), and as a share of the whole export. Target: the
     first record within 1.5 round trips of the first request (page 1 is one round
     trip; not one query's worth).

``--fetcher-root PATH`` runs another tree's fetcher (see
:class:`benchmarks._limits.FetcherUnderTest`) against this tree's simulator: the
"before" figures.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks import _limits
from benchmarks._harness import Simulator, jsonl_counts, print_table, simulator, verdict
from benchmarks._limits import FetcherUnderTest

PAGE_SIZE: Final = 10
#: How often the benchmark looks at the ``.partial`` file, seconds.
POLL_S: Final = 0.005
#: Runs per contender; the table shows the median and the range.
REPEATS: Final = 3
#: (j1): at most this much more peak RSS at the large query than at the small one.
GROWTH_TARGET: Final = 0.2
#: (j2): the first record within this many round trips of the first request.
ROUND_TRIPS_TARGET: Final = 1.5


@dataclass(frozen=True)
class Sizes:
    """Pages of (j1)'s two queries and its latency; pages and latency of (j2)."""

    small_pages: int
    large_pages: int
    memory_latency_ms: float
    first_pages: int
    first_latency_ms: float


FULL: Final = Sizes(
    small_pages=100, large_pages=1000, memory_latency_ms=0.0, first_pages=200,
    first_latency_ms=150.0,
)  # fmt: skip
#: ``--quick``: a smoke test; the targets mean nothing at these sizes.
QUICK: Final = Sizes(
    small_pages=10, large_pages=50, memory_latency_ms=0.0, first_pages=30, first_latency_ms=20.0
)


def partial_of(path: Path) -> Path:
    """The in-progress file of ``path``, as the sinks name it (``NAME.partial``).

    Spelled out rather than imported from ``fetcher.sinks._common`` so that it
    describes what the fetcher under test writes, whichever tree that is.
    """
    return path.with_name(path.name + ".partial")


@dataclass(frozen=True)
class Export(_limits.Export):
    """One ``fetcher export`` process, finished and checked, with when its first page came."""

    spawned: float  # time.monotonic() just before the process was spawned
    first_record: float | None  # time.monotonic() when the .partial file had its first bytes
    first_request: float | None  # the simulator's arrival of the first team-stats request

    @property
    def to_first_record_s(self) -> float | None:
        """From the process's spawn to the first record in ``.partial``."""
        return None if self.first_record is None else self.first_record - self.spawned

    @property
    def to_first_request_s(self) -> float | None:
        """From the process's spawn to the simulator's first team-stats request."""
        return None if self.first_request is None else self.first_request - self.spawned

    @property
    def request_to_record_s(self) -> float | None:
        """From the first team-stats request to the first record written."""
        if self.first_record is None or self.first_request is None:
            return None
        return self.first_record - self.first_request

    def figures(self) -> dict[str, Any]:
        """The run as JSON."""
        m = self.measured

        def s(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "name": self.name,
            "complete": self.complete,
            "records": self.records,
            "expected": self.expected,
            "pages": self.report.get("pages"),
            "requests": self.report.get("requests"),
            "wall_s": round(m.wall_s, 3),
            "fetch_s": s(self.report.get("duration_s")),
            "cpu_s": round(m.cpu_s, 3),
            "peak_rss_mb": round(m.peak_rss_mb, 1),
            "sampled_peak_rss_mb": (
                None if m.sampled_peak_rss_mb is None else round(m.sampled_peak_rss_mb, 1)
            ),
            "to_first_request_s": s(self.to_first_request_s),
            "to_first_record_s": s(self.to_first_record_s),
            "request_to_first_record_s": s(self.request_to_record_s),
        }


class _Watch:
    """Polls a file from a thread of this process; notes when it first has bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                size = self.path.stat().st_size
            except OSError:  # not created yet, or renamed into place already
                size = 0
            if size > 0:
                self.seen = time.monotonic()
                return
            self._stop.wait(POLL_S)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def export(
    fetcher: FetcherUnderTest, sim: Simulator, tmp: Path, name: str, users: Sequence[str]
) -> Export:
    """Export ``users`` as ONE query (``--user-batch-size`` = their number) of one day."""
    tmp.mkdir(parents=True, exist_ok=True)
    users_file = tmp / f"{name}.users.txt"
    users_file.write_text("\n".join(users))
    out, report = tmp / f"{name}.jsonl", tmp / f"{name}.report.json"
    args = [
        "export", "--base-url", sim.base_url, "--users-file", str(users_file),
        "--start", "2024-01-01", "--end", "2024-01-01", "--timezone", "UTC",
        "--type", "prospect", "--page-size", str(PAGE_SIZE),
        "--user-batch-size", str(len(users)),
        "--out", str(out), "--report", str(report), "--state", str(tmp / f"{name}.state.json"),
        "--fresh", "--log-level", "warning",
    ]  # fmt: skip
    sim.reset()
    with _Watch(partial_of(out)) as watch:
        spawned = time.monotonic()
        measured = fetcher.run(args, tmp)
    measured.check(f"fetcher ({name})")
    events = sim.stats(events=True)["events"]
    arrivals = [e["t"] for e in events if e.get("query") is not None]
    data = json.loads(report.read_text())
    records, distinct = jsonl_counts(out)
    return Export(
        name, measured, data, len(users), records, distinct, spawned, watch.seen,
        min(arrivals) if arrivals else None,
    )  # fmt: skip


def median_of(runs: Sequence[Export], key: Callable[[Export], float | None]) -> float | None:
    """The median of ``key`` over the runs that have it."""
    values = [v for v in map(key, runs) if v is not None]
    return statistics.median(values) if values else None


def spread(runs: Sequence[Export], key: Callable[[Export], float | None], fmt: str) -> str:
    """``median (min-max)`` of ``key``, ``-`` when no run has it."""
    values = [v for v in map(key, runs) if v is not None]
    if not values:
        return "-"
    middle = format(statistics.median(values), fmt)
    if len(values) == 1:
        return middle
    return f"{middle} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def peak(run: Export) -> float:
    return run.measured.peak_rss_mb


def memory(sizes: Sizes, tmp: Path, fetcher: FetcherUnderTest) -> dict[str, Any]:
    """(j1) peak RSS of one query of ``large_pages`` against one of ``small_pages``."""
    team = sizes.large_pages * PAGE_SIZE
    server = ["--latency-ms", str(sizes.memory_latency_ms)] if sizes.memory_latency_ms else []
    runs: dict[int, list[Export]] = {}
    with simulator(team_size=team, extra=server) as sim:
        for pages in (sizes.small_pages, sizes.large_pages):
            users = sim.user_ids[: pages * PAGE_SIZE]
            runs[pages] = [
                export(fetcher, sim, tmp / "memory", f"{pages}p-{n}", users) for n in range(REPEATS)
            ]
    small, large = runs[sizes.small_pages], runs[sizes.large_pages]
    low, high = median_of(small, peak) or 0.0, median_of(large, peak) or 0.0
    growth = high / low - 1 if low else float("inf")
    complete = all(r.complete for r in (*small, *large))
    rows = []
    for pages, group in runs.items():
        first = group[0]
        target = "-"
        if pages == sizes.large_pages:
            ok = growth <= GROWTH_TARGET and complete
            target = f"<=+{100 * GROWTH_TARGET:g}% {verdict(ok)}"
        rows.append([
            pages, first.expected, f"{sum(r.records for r in group) // len(group)}",
            all(r.complete for r in group), first.report.get("requests", "-"),
            spread(group, lambda r: r.measured.wall_s, ".2f"),
            spread(group, lambda r: r.measured.cpu_s, ".2f"),
            spread(group, peak, ".1f"),
            f"{100 * growth:+.1f}%" if pages == sizes.large_pages else "", target,
        ])  # fmt: skip
    latency = f"{sizes.memory_latency_ms:g} ms latency" if sizes.memory_latency_ms else "no latency"
    print_table(
        f"(j1) memory: ONE query of {sizes.small_pages:,} pages against ONE of "
        f"{sizes.large_pages:,} (page size {PAGE_SIZE}, --user-batch-size = the users), "
        f"{latency}, to JSONL; median (min-max) of {REPEATS}; fetcher {fetcher.label}",
        ["pages", "users", "records", "complete", "requests", "wall s", "CPU s",
         "peak RSS MB", "growth", "target"],
        rows,
    )  # fmt: skip
    return {
        "small_pages": sizes.small_pages,
        "large_pages": sizes.large_pages,
        "latency_ms": sizes.memory_latency_ms,
        "peak_rss_mb": {"small": round(low, 1), "large": round(high, 1)},
        "peak_rss_growth": round(growth, 4),
        "complete": complete,
        "runs": [r.figures() for group in runs.values() for r in group],
    }


def first_page(sizes: Sizes, tmp: Path, fetcher: FetcherUnderTest) -> dict[str, Any]:
    """(j2) from the process's start to the first record in ``.partial``, and the whole run."""
    users = sizes.first_pages * PAGE_SIZE
    rtt = sizes.first_latency_ms / 1000
    with simulator(team_size=users, extra=["--latency-ms", str(sizes.first_latency_ms)]) as sim:
        runs = [
            export(fetcher, sim, tmp / "first", f"first-{n}", sim.user_ids) for n in range(REPEATS)
        ]
    to_record = median_of(runs, lambda r: r.to_first_record_s)
    to_request = median_of(runs, lambda r: r.to_first_request_s)
    after_request = median_of(runs, lambda r: r.request_to_record_s)
    wall = median_of(runs, lambda r: r.measured.wall_s) or 0.0
    complete = all(r.complete for r in runs)
    ok = after_request is not None and after_request <= ROUND_TRIPS_TARGET * rtt and complete

    def share(r: Export) -> float | None:
        first = r.to_first_record_s
        return None if first is None else first / r.measured.wall_s

    def trips(r: Export) -> float | None:
        after = r.request_to_record_s
        return None if after is None else after / rtt

    print_table(
        f"(j2) time to first page written: ONE query of {sizes.first_pages:,} pages "
        f"({users:,} users, page size {PAGE_SIZE}), {sizes.first_latency_ms:g} ms latency "
        f"(one round trip), to JSONL, .partial polled every {1000 * POLL_S:g} ms; median "
        f"(min-max) of {len(runs)}; fetcher {fetcher.label}",
        ["figure", "value", "target"],
        [
            ["records (complete)", f"{runs[0].records} ({complete})", "-"],
            ["start -> first request s", spread(runs, lambda r: r.to_first_request_s, ".3f"),
             "-"],
            ["start -> first record s", spread(runs, lambda r: r.to_first_record_s, ".3f"),
             "-"],
            ["first request -> first record s",
             spread(runs, lambda r: r.request_to_record_s, ".3f"), "-"],
            ["  in round trips", spread(runs, trips, ".2f"),
             f"<= {ROUND_TRIPS_TARGET:g} {verdict(ok)}"],
            ["whole export (wall) s", spread(runs, lambda r: r.measured.wall_s, ".3f"), "-"],
            ["fetch s (report)", spread(runs, lambda r: r.report.get("duration_s"), ".3f"),
             "-"],
            ["start -> first record / wall", spread(runs, share, ".2f"), "-"],
        ],
    )  # fmt: skip
    return {
        "pages": sizes.first_pages,
        "latency_ms": sizes.first_latency_ms,
        "poll_ms": 1000 * POLL_S,
        "to_first_request_s": None if to_request is None else round(to_request, 4),
        "to_first_record_s": None if to_record is None else round(to_record, 4),
        "request_to_first_record_s": None if after_request is None else round(after_request, 4),
        "request_to_first_record_rtt": (
            None if after_request is None else round(after_request / rtt, 2)
        ),
        "wall_s": round(wall, 3),
        "first_record_share_of_wall": (
            None if to_record is None or not wall else round(to_record / wall, 3)
        ),
        "complete": complete,
        "runs": [r.figures() for r in runs],
    }


def scenario_j(
    _sizes: object, tmp: Path, *, quick: bool = False, fetcher: FetcherUnderTest, **_: Any
) -> dict[str, Any]:
    """(j) pages streamed to the sink: peak RSS of 1,000 pages against 100, time to first page."""
    sizes = QUICK if quick else FULL
    return {
        "fetcher": fetcher.label,
        "memory": memory(sizes, tmp, fetcher),
        "first_page": first_page(sizes, tmp, fetcher),
    }


SCENARIOS: Final[dict[str, Callable[..., dict[str, Any]]]] = {"j": scenario_j}
