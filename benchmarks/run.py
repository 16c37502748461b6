"""Every benchmark of the project in one command, each scenario on its own simulator.

    python -m benchmarks.run [--scenario a,b,...,l] [--quick] [--profile] [--fetcher-root PATH]

Each scenario starts ``python -m fetcher.simulator`` on a free local port and
runs its contenders one after another against that same server and dataset,
resetting the server's counters and rate-limit windows in between. Every
contender is a process of its own, measured alone (wall, CPU, peak RSS; see
:func:`benchmarks._harness.measure`), and its output is checked for
completeness (one row per user per window, none missing, none twice), so a
fast but wrong contender cannot win.

(a) latency-bound: 2,000 users, page size 10, 150 ms latency, no rate limit.
    fetcher at its defaults against fetcher with concurrency 1, a plain
    sequential aiohttp loop, and dlt's RESTClient. Target: at least 10x faster
    than the sequential loop and than dlt.
(b) limit-bound: the same with a fixed window of 40 requests per second on the
    server; fetcher with no client limit (it follows the headers), and with
    ``--rate-limit 40/1s``. Utilisation = ideal / fetch time, the ideal being
    what the fixed window allows. Targets: utilisation at least 0.9; no 429s
    when the limit is configured.
(c) large pages: 50,000 users, page size 1,000, four daily slices (200,000
    records), no latency: records per CPU-second of the fetcher process, and
    net of interpreter start-up. Target: at least 100,000. ``--profile`` also
    profiles the same export in-process with pyinstrument.
(d) scale: 10,000 users, page size 10, one and twenty daily slices (1,000 and
    20,000 pages) to JSONL and to DuckDB; peak RSS of each. Targets: under
    150 MB, and at most 20% more at 20,000 pages than at 1,000.
(e)-(i) rate limits in the wild (issue 14): whole-second resets and windows
    aligned at a phase, at 40 per 1 s (e) and 20 per 2 s (f); two processes on
    one key (g), with a shared limiter (h); a foreign client on the key (i).
    See :mod:`benchmarks.bench_limits`. ``--fetcher-root PATH`` runs them with
    the fetcher of another tree (an older commit's worktree) against this
    tree's simulator.
(j) pages streamed to the sink: peak RSS of ONE query of 1,000 pages (10,000 users,
    ``--user-batch-size 10000``, page size 10) against ONE of 100 pages, no latency;
    and the time from process start to the first record in the output's
    ``.partial`` file for one query of 200 pages at 150 ms latency, from the
    simulator's first request too, in round trips and as a share of the whole run.
    Targets: at most 20% more peak RSS at 1,000 pages than at 100; the first record
    within 1.5 round trips of the first request. See :mod:`benchmarks.bench_streaming`;
    ``--fetcher-root PATH`` applies as to (e)-(i).
(k) fetcher as a dlt source: the same 200-page export through a dlt pipeline into DuckDB,
    ``team_stats_source`` against dlt's RESTClient paginator, at 150 ms latency and at 40
    per 1 s with whole-second resets; ``pipeline.extract`` and ``pipeline.run`` timed.
    Targets: extract at least 8x faster latency-bound, at least 0.85 of the limit
    limit-bound. See :mod:`benchmarks.bench_dlt` (skipped without dlt).

(l) many workers (issue 16): 12 keys with their own limits x 7 daily slices x 2
    types, over 1, 2 and 4 ``fetcher worker`` processes and in one ``fetcher export``
    process; throughput against the sum of the keys' limits. Target: utilisation at
    least 0.85 with 4 workers. Needs Redis and PostgreSQL. See
    :mod:`benchmarks.bench_distributed`.

``--quick`` runs small versions of every scenario (a smoke test; the targets
are shown but mean nothing at that size). The dlt contender is skipped when
dlt is not installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchmarks import bench_distributed, bench_dlt, bench_limits, bench_streaming
from benchmarks._harness import (
    KEY,
    Measured,
    Simulator,
    bench_env,
    emit_json,
    fetcher_argv,
    machine,
    measure,
    optional,
    print_table,
    simulator,
    verdict,
)

# An explicit re-export (mypy --strict): it moved to the harness, tests import it from here.
from benchmarks._harness import jsonl_counts as jsonl_counts  # noqa: PLC0414
from benchmarks._limits import FetcherUnderTest
from benchmarks.contenders import write_workload
from fetcher.app.settings import ExportSettings
from fetcher.spec import QuerySpec

#: Users per query when fetcher is run at its defaults (``--user-batch-size``).
DEFAULT_BATCH: Final[int] = ExportSettings.model_fields["user_batch_size"].default
FIRST_DAY: Final = dt.date(2024, 1, 1)
UTC: Final = dt.UTC


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; :data:`FULL` is what the targets are about."""

    team: int  # (a)
    latency_ms: float  # (a), (b)
    limit_team: int  # (b)
    limit: int  # (b): requests per window
    window_s: float  # (b)
    big_team: int  # (c)
    big_days: int  # (c)
    scale_team: int  # (d): pages per day = scale_team / 10
    scale_days: int  # (d)


FULL: Final = Sizes(
    team=2000,
    latency_ms=150.0,
    limit_team=2000,
    limit=40,
    window_s=1.0,
    big_team=50_000,
    big_days=10,
    scale_team=10_000,
    scale_days=20,
)
QUICK: Final = Sizes(
    team=200,
    latency_ms=20.0,
    limit_team=400,
    limit=10,
    window_s=0.5,
    big_team=2000,
    big_days=2,
    scale_team=200,
    scale_days=5,
)


# -- the workload --------------------------------------------------------------------------------


def day_windows(days: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """``days`` whole UTC days from :data:`FIRST_DAY`, as ``--slice day`` cuts them."""
    out = []
    for n in range(days):
        start = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=n), dt.time(), UTC)
        out.append((start, start + dt.timedelta(days=1) - dt.timedelta(milliseconds=1)))
    return out


def window_args(days: int) -> list[str]:
    """The CLI options for the same windows as :func:`day_windows`."""
    last = FIRST_DAY + dt.timedelta(days=days - 1)
    args = ["--start", FIRST_DAY.isoformat(), "--end", last.isoformat(), "--timezone", "UTC"]
    return [*args, "--slice", "day"] if days > 1 else args


def query_specs(
    users: Sequence[str],
    windows: Iterable[tuple[dt.datetime, dt.datetime]],
    *,
    page_size: int,
    batch: int = DEFAULT_BATCH,
) -> list[QuerySpec]:
    """The queries ``fetcher export`` makes of these users and windows: window x user batch."""
    return [
        QuerySpec(
            user_ids=tuple(users[first : first + batch]),
            start=start,
            end=end,
            type="prospect",
            page_size=page_size,
        )
        for start, end in windows
        for first in range(0, len(users), batch)
    ]


def pages_of(users: int, page_size: int, batch: int = DEFAULT_BATCH) -> int:
    """Pages of one window's queries: each batch of users is paged on its own."""
    full, rest = divmod(users, batch)
    return full * math.ceil(batch / page_size) + math.ceil(rest / page_size)


# -- one contender -------------------------------------------------------------------------------


@dataclass
class Run:
    """One contender's run, measured and checked."""

    name: str
    measured: Measured
    expected: int
    records: int
    distinct: int
    fetch_s: float | None
    requests: int
    refused: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every expected row, each exactly once."""
        return self.records == self.expected == self.distinct

    @property
    def wall_s(self) -> float:
        """Seconds from process start to exit."""
        return self.measured.wall_s

    def figures(self) -> dict[str, Any]:
        """The run as JSON."""
        m = self.measured
        return {
            "name": self.name,
            "complete": self.complete,
            "records": self.records,
            "expected": self.expected,
            "wall_s": round(m.wall_s, 3),
            "fetch_s": None if self.fetch_s is None else round(self.fetch_s, 3),
            "cpu_s": round(m.cpu_s, 3),
            "peak_rss_mb": round(m.peak_rss_mb, 1),
            "sampled_peak_rss_mb": (
                None if m.sampled_peak_rss_mb is None else round(m.sampled_peak_rss_mb, 1)
            ),
            "rss_samples": m.samples,
            "requests": self.requests,
            "refused_429": self.refused,
        } | self.extra


def duckdb_counts(path: Path) -> tuple[int, int]:
    """Rows in a DuckDB output, and distinct (user, window) among them."""
    import duckdb  # noqa: PLC0415

    with duckdb.connect(str(path), read_only=True) as connection:
        row = connection.execute(
            "SELECT count(*), count(DISTINCT (user_id, window_start)) FROM team_stats"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass(frozen=True)
class Stage:
    """A scenario's simulator, scratch directory and the query every contender runs."""

    sim: Simulator
    tmp: Path
    users_file: Path
    specs: list[QuerySpec]
    workload: Path
    query_args: tuple[str, ...]
    expected: int

    @classmethod
    def of(
        cls, sim: Simulator, tmp: Path, *, days: int, page_size: int, batch: int = DEFAULT_BATCH
    ) -> Stage:
        """Write the users and the contenders' workload for ``days`` daily windows."""
        tmp.mkdir(parents=True, exist_ok=True)
        users_file = tmp / "users.txt"
        users_file.write_text("\n".join(sim.user_ids))
        specs = query_specs(sim.user_ids, day_windows(days), page_size=page_size, batch=batch)
        workload = tmp / "workload.json"
        write_workload(workload, (spec.body(1) for spec in specs))
        query_args = (
            "--users-file", str(users_file), *window_args(days), "--type", "prospect",
            "--page-size", str(page_size), "--user-batch-size", str(batch),
        )  # fmt: skip
        return cls(sim, tmp, users_file, specs, workload, query_args, len(sim.user_ids) * days)

    def fetcher(self, name: str, *extra: str, suffix: str = ".jsonl") -> Run:
        """Run ``fetcher export`` (the real CLI) with the stage's query and ``extra`` options."""
        self.sim.reset()
        out, report = self.tmp / f"{name}{suffix}", self.tmp / f"{name}.report.json"
        argv = fetcher_argv(
            "export", "--base-url", self.sim.base_url, *self.query_args,
            "--out", str(out), "--report", str(report), "--log-level", "warning", *extra,
        )  # fmt: skip
        measured = measure(argv, env=bench_env())
        measured.check(f"fetcher ({name})")
        data = json.loads(report.read_text())
        records, distinct = duckdb_counts(out) if suffix == ".duckdb" else jsonl_counts(out)
        stats = self.sim.stats()
        return Run(
            name, measured, self.expected, records, distinct, data["duration_s"],
            stats["requests"], stats["rate_limited"], {"pages": data["pages"]},
        )  # fmt: skip

    def contender(self, which: str) -> Run:
        """Run a contender of :mod:`benchmarks.contenders` over the stage's workload."""
        self.sim.reset()
        out, report = self.tmp / f"{which}.jsonl", self.tmp / f"{which}.report.json"
        argv = [
            *contender_argv(which),
            "--base-url", self.sim.base_url, "--workload", str(self.workload),
            "--out", str(out), "--report", str(report),
        ]  # fmt: skip
        measured = measure(argv, env=bench_env())
        measured.check(which)
        data = json.loads(report.read_text())
        records, distinct = jsonl_counts(out)
        stats = self.sim.stats()
        return Run(
            which, measured, self.expected, records, distinct, data["duration_s"],
            stats["requests"], stats["rate_limited"], {"pages": data["pages"]},
        )  # fmt: skip


def contender_argv(which: str) -> list[str]:
    """``python -m benchmarks.contenders WHICH`` with this interpreter."""
    import sys  # noqa: PLC0415

    return [sys.executable, "-m", "benchmarks.contenders", which]


def have_dlt() -> bool:
    """Whether the dlt contender can run (it is in the ``bench`` extra)."""
    return optional("dlt") is not None


def median_cpu(argv: Sequence[str], times: int = 3) -> float:
    """The median CPU seconds of ``times`` runs of ``argv`` (start-up costs vary a little)."""
    cpu = sorted(measure(argv, env=bench_env()).cpu_s for _ in range(times))
    return cpu[len(cpu) // 2]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or infinity for a zero denominator."""
    return numerator / denominator if denominator > 0 else math.inf


# -- the scenarios -------------------------------------------------------------------------------


def scenario_a(sizes: Sizes, tmp: Path, **_: Any) -> dict[str, Any]:
    """(a) latency-bound: fetcher against concurrency 1, a sequential loop and dlt."""
    server = ["--latency-ms", str(sizes.latency_ms)]
    with simulator(team_size=sizes.team, extra=server) as sim:
        stage = Stage.of(sim, tmp, days=1, page_size=10)
        runs = [stage.fetcher("fetcher"), stage.fetcher("fetcher -c1", "--concurrency", "1")]
        runs.append(stage.contender("aiohttp"))
        if have_dlt():
            runs.append(stage.contender("dlt"))
    base = runs[0]
    rows, speedups = [], {}
    for run in runs:
        speedup = ratio(run.wall_s, base.wall_s)
        fetch_speedup = ratio(run.fetch_s or 0.0, base.fetch_s or 0.0)
        target = "-"
        if run.name in ("aiohttp", "dlt"):
            speedups[run.name] = round(speedup, 2)
            target = f">=10x {verdict(speedup >= 10 and run.complete and base.complete)}"
        rows.append([
            run.name, run.records, run.complete, run.requests, f"{run.wall_s:.2f}",
            f"{run.fetch_s:.2f}", f"{speedup:.1f}x", f"{fetch_speedup:.1f}x", target,
        ])  # fmt: skip
    if not have_dlt():
        rows.append(["dlt", "-", "-", "-", "-", "-", "-", "-", "skipped: dlt not installed"])
    print_table(
        f"(a) latency-bound: {sizes.team:,} users, page size 10, {sizes.latency_ms:g} ms "
        "latency, no rate limit",
        ["contender", "records", "complete", "requests", "wall s", "fetch s",
         "fetcher speed-up (wall)", "(fetch)", "target"],
        rows,
    )  # fmt: skip
    return {"runs": [r.figures() for r in runs], "speedup_wall": speedups}


def scenario_b(sizes: Sizes, tmp: Path, **_: Any) -> dict[str, Any]:
    """(b) limit-bound: rate-limit utilisation, with and without a configured limit."""
    limit, window, latency = sizes.limit, sizes.window_s, sizes.latency_ms
    server = [
        "--latency-ms", str(latency), "--rate-limit", str(limit), "--rate-window", str(window),
    ]  # fmt: skip
    rate = f"{limit}/{window:g}s"
    with simulator(team_size=sizes.limit_team, extra=server) as sim:
        stage = Stage.of(sim, tmp, days=1, page_size=10)
        runs = [
            stage.fetcher("headers only"),
            # A configured rate raises the default concurrency to one second of it
            # (40 here), so that a window's quota goes out in one round trip.
            stage.fetcher(f"--rate-limit {rate}", "--rate-limit", rate),
            # The same held at the old default of 16 in flight: the last window's
            # requests then need three round trips instead of one.
            stage.fetcher(
                f"--rate-limit {rate} --concurrency 16",
                "--rate-limit", rate, "--concurrency", "16",
            ),
        ]  # fmt: skip
    pages = pages_of(sizes.limit_team, 10)
    # Fixed windows from the first request: one window per `limit` requests, and
    # the last request's latency.
    ideal = (math.ceil(pages / limit) - 1) * window + latency / 1000
    rows, figures = [], []
    # The targets are about fetcher at its defaults; the last run is for reference.
    for configured, run in zip((False, True, None), runs, strict=True):
        fetch_s = run.fetch_s or math.inf
        utilisation = ideal / fetch_s
        ok = utilisation >= 0.9 and run.complete
        target = f">=0.9 {verdict(ok)}" if configured is not None else "(reference)"
        if configured:
            target += f"; 0 429s {verdict(run.refused == 0)}"
        rows.append([
            run.name, run.records, run.complete, run.requests, run.refused,
            f"{fetch_s:.2f}", f"{run.wall_s:.2f}", f"{ideal:.2f}", f"{utilisation:.2f}",
            f"{ideal / run.wall_s:.2f}", target,
        ])  # fmt: skip
        figures.append(run.figures() | {"utilisation": round(utilisation, 3)})
    print_table(
        f"(b) limit-bound: {limit} requests / {window:g} s fixed window, {pages} pages, "
        f"{latency:g} ms latency",
        ["client", "records", "complete", "requests", "429s", "fetch s", "wall s", "ideal s",
         "utilisation", "(of wall)", "target"],
        rows,
    )  # fmt: skip
    return {"ideal_s": round(ideal, 3), "pages": pages, "runs": figures}


def scenario_c(sizes: Sizes, tmp: Path, *, profile: bool = False, **_: Any) -> dict[str, Any]:
    """(c) large pages: records per CPU-second, gross and net of start-up; optional profile."""
    with simulator(team_size=sizes.big_team) as sim:
        stage = Stage.of(sim, tmp, days=sizes.big_days, page_size=1000, batch=1000)
        startup = {
            "fetcher": median_cpu(fetcher_argv("--version")),
            "aiohttp": median_cpu([*contender_argv("aiohttp"), "--startup-only"]),
        }
        # CPU seconds on a shared machine vary by 10-20% from run to run: the
        # target is judged on fetcher's median of three.
        repeats = sorted(
            (stage.fetcher("fetcher") for _ in range(3)), key=lambda r: r.measured.cpu_s
        )
        runs = [repeats[1], stage.contender("aiohttp")]
        if have_dlt():
            startup["dlt"] = median_cpu([*contender_argv("dlt"), "--startup-only"])
            runs.append(stage.contender("dlt"))
        profile_text = profile_export(sim, stage, sizes) if profile else None
    runs[0].extra["cpu_s_of_3"] = [round(r.measured.cpu_s, 3) for r in repeats]
    rows, figures = [], []
    for run in runs:
        cpu = run.measured.cpu_s
        gross = ratio(run.records, cpu)
        net = ratio(run.records, cpu - startup[run.name])
        target = "-"
        if run.name == "fetcher":
            ok = all(r.complete for r in repeats)
            target = (
                f">=100k {verdict(gross >= 100_000 and ok)}; net {verdict(net >= 100_000 and ok)}"
            )
        rows.append([
            run.name, run.records, run.complete, f"{run.wall_s:.2f}", f"{cpu:.2f}",
            f"{startup[run.name]:.2f}", f"{gross:,.0f}", f"{net:,.0f}", target,
        ])  # fmt: skip
        figures.append(
            run.figures()
            | {
                "startup_cpu_s": round(startup[run.name], 3),
                "records_per_cpu_s": round(gross),
                "records_per_cpu_s_net": round(net),
            }
        )
    if not have_dlt():
        rows.append(["dlt", "-", "-", "-", "-", "-", "-", "-", "skipped: dlt not installed"])
    print_table(
        f"(c) large pages: {sizes.big_team:,} users x {sizes.big_days} days, page size 1,000, "
        "no latency, to JSONL (fetcher: the median of three runs)",
        ["contender", "records", "complete", "wall s", "CPU s", "start-up CPU s",
         "records / CPU s", "net of start-up", "target"],
        rows,
    )  # fmt: skip
    if profile_text is not None:
        print("\n(c) pyinstrument profile of the same export, in-process:\n" + profile_text)
    return {"runs": figures}


def profile_export(sim: Simulator, stage: Stage, sizes: Sizes) -> str:
    """Profile scenario (c)'s export in this process with pyinstrument; the profile as text."""
    pyinstrument = optional("pyinstrument")
    if pyinstrument is None:
        return "(skipped: pyinstrument is not installed; pip install -e '.[bench]')"
    import anyio  # noqa: PLC0415
    import structlog  # noqa: PLC0415

    import fetcher  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    specs = stage.specs
    sim.reset()
    sink = fetcher.JsonlSink(stage.tmp / "profile.jsonl")
    profiler = pyinstrument.Profiler(interval=0.001, async_mode="disabled")
    with profiler:
        summary = anyio.run(lambda: fetcher.export(specs, sink, api_key=KEY, base_url=sim.base_url))
    if summary.records != len(sim.user_ids) * sizes.big_days:
        raise SystemExit(f"profiled export is incomplete: {summary.records} records")
    text: str = profiler.output_text(unicode=False, color=False, show_all=False)
    return text


def scenario_d(sizes: Sizes, tmp: Path, **_: Any) -> dict[str, Any]:
    """(d) scale: 1,000 and 20,000 pages to JSONL and DuckDB; peak memory and its growth."""
    small, large = 1, sizes.scale_days
    rows, figures = [], {}
    with simulator(team_size=sizes.scale_team) as sim:
        runs: dict[tuple[str, int], Run] = {}
        for days in (small, large):
            stage = Stage.of(sim, tmp / f"days{days}", days=days, page_size=10)
            for sink, suffix in (("jsonl", ".jsonl"), ("duckdb", ".duckdb")):
                runs[sink, days] = stage.fetcher(f"{sink}-{days}d", suffix=suffix)
    for sink in ("jsonl", "duckdb"):
        low, high = runs[sink, small], runs[sink, large]
        growth = high.measured.peak_rss_mb / low.measured.peak_rss_mb - 1
        for run in (low, high):
            pages = run.extra["pages"]
            peak = run.measured.peak_rss_mb
            sampled = run.measured.sampled_peak_rss_mb
            target = f"<150 MB {verdict(peak < 150 and run.complete)}"
            if run is high:
                target += f"; growth <=20% {verdict(growth <= 0.2)}"
            rows.append([
                sink, pages, run.records, run.complete, f"{run.wall_s:.1f}",
                f"{run.measured.cpu_s:.1f}", f"{1000 * run.wall_s / pages:.2f}",
                f"{peak:.0f}", "-" if sampled is None else f"{sampled:.0f}",
                f"{100 * growth:+.1f}%" if run is high else "", target,
            ])  # fmt: skip
        figures[sink] = {
            "runs": [low.figures(), high.figures()],
            "peak_rss_growth": round(growth, 4),
        }
    print_table(
        f"(d) scale: {sizes.scale_team:,} users, page size 10, {small} and {large} daily "
        "slices, no latency",
        ["sink", "pages", "records", "complete", "wall s", "CPU s", "ms / page",
         "peak RSS MB", "(sampled)", "growth", "target"],
        rows,
    )  # fmt: skip
    return figures


SCENARIOS: Final[dict[str, Callable[..., dict[str, Any]]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "d": scenario_d,
    # Rate limits in the wild (issue 14): see benchmarks.bench_limits.
    **bench_limits.SCENARIOS,
    # Pages streamed to the sink: see benchmarks.bench_streaming.
    **bench_streaming.SCENARIOS,
    # fetcher as a dlt source: see benchmarks.bench_dlt.
    **bench_dlt.SCENARIOS,
    # Many workers on Dramatiq and Redis: see benchmarks.bench_distributed.
    **bench_distributed.SCENARIOS,
}
#: The scenarios that can run another tree's fetcher (``--fetcher-root``).
ROOTED: Final = frozenset(bench_limits.SCENARIOS) | frozenset(bench_streaming.SCENARIOS)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen scenarios; print a table and a ``BENCH {json}`` line for each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", default=",".join(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--profile", action="store_true", help="profile scenario (c)")
    parser.add_argument(
        "--fetcher-root",
        type=Path,
        metavar="PATH",
        help="(e)-(j): run the fetcher of the tree at PATH (PYTHONPATH=PATH) against this "
        "tree's simulator, e.g. a git worktree of an older commit",
    )
    parser.add_argument(
        "--launch-at",
        type=float,
        metavar="SECONDS",
        help="(e)-(i): launch the fetcher processes this many seconds into the server's "
        "window (default: at once); a late start is where the rate limiter loses most",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if args.fetcher_root is not None:
        if not (args.fetcher_root / "fetcher" / "__init__.py").is_file():
            parser.error(f"--fetcher-root {args.fetcher_root}: no fetcher/__init__.py there")
        if unrooted := [s for s in chosen if s not in ROOTED]:
            parser.error(f"--fetcher-root applies to (e)-(j), not to ({unrooted[0]})")
    if args.launch_at is not None and args.launch_at < 0:
        parser.error(f"--launch-at {args.launch_at:g}: seconds into the window, 0 or more")
    fetcher_under_test = FetcherUnderTest(args.fetcher_root, args.launch_at)
    sizes = QUICK if args.quick else FULL
    info = machine()
    print(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"{info['platform']}{'; quick sizes' if args.quick else ''}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fetcher-bench-") as tmp:
        for name in chosen:
            results = SCENARIOS[name](
                sizes, Path(tmp) / name,
                profile=args.profile, quick=args.quick, fetcher=fetcher_under_test,
            )  # fmt: skip
            emit_json(f"scenario_{name}", {"quick": args.quick, **results})


if __name__ == "__main__":
    main()
