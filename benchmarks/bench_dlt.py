"""fetcher as a dlt source: scenario (k) of ``python -m benchmarks.run``.

The same 200-page export (2,000 users, page size 10, one day, two queries of 1,000
users, as ``fetcher export`` cuts them) through a dlt pipeline into DuckDB, two ways,
on one ``python -m fetcher.simulator`` process (reset between runs):

- **team_stats_source**: ``fetcher.integrations.dlt.team_stats_source`` (one probe of
  the member list, then fetcher's concurrent pages);
- **RESTClient**: a dlt resource over dlt's own ``RESTClient`` with the body
  page-number paginator of the dlt contender (:func:`benchmarks.contenders.
  dlt_rest_pages`), yielding each page as it comes, one after another. It asks for
  exactly the queries fetcher asks for (fetcher's own planner writes them).

Both resources merge on the same primary key (window, type, count_by, user id), with
the same key columns, so dlt's normalize and load cost the same for both.

(k1) latency-bound: 150 ms latency, no rate limit. Target: ``pipeline.extract`` at
     least 8x faster with team_stats_source.
(k2) limit-bound: 40 requests per 1 s window, aligned at phase 0.37 s, with
     ``x-ratelimit-reset`` in whole seconds (:func:`benchmarks.bench_limits.
     server_args`), 150 ms latency. Target: team_stats_source's extract at least
     0.85 of the limit: the ideal (:func:`benchmarks._limits.ideal_s`, from the
     moment ``pipeline.extract`` was called, 200 pages, the two page 1s first) over
     the extract time. The issue asks for a refused key to be found before any
     team-stats page is asked for, so team_stats_source probes the key (the team
     member list) first: the ideal has that one round trip before the page 1s, as
     it has page 1's before the rest, and that one request more of the key's budget
     (201 in all: a 200-page export at 40 a window needs a sixth window for its last
     request). The share against an ideal without it is
     reported beside it: the two differ most when a run starts late in a window,
     where the probe's round trip pushes the first burst into the next window.

Each figure comes from a process of its own (``python -m benchmarks.bench_dlt``,
the child role), which builds a fresh pipeline and times either ``pipeline.extract``
(then normalizes and loads, untimed, to check the rows) or the whole ``pipeline.run``,
then counts the table's rows: every run must hold each (user, window) exactly once.
The table shows both ratios: extract and whole run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from benchmarks._harness import (
    Measured,
    Simulator,
    bench_env,
    measure,
    print_table,
    simulator,
    verdict,
)
from benchmarks._limits import BATCH, PAGE_SIZE, ideal_s, pages_for, windows_of
from benchmarks.bench_limits import Limits, server_args
from benchmarks.contenders import dlt_rest_pages, write_workload

Which = Literal["fetcher", "rest"]
Mode = Literal["extract", "run"]

DAY: Final = "2024-01-01"
#: (k1): team_stats_source's extract at least this many times faster than RESTClient's.
SPEEDUP_TARGET: Final = 8.0
#: (k2): team_stats_source's extract at least this share of the limit.
UTILISATION_TARGET: Final = 0.85

FULL: Final = Limits(limit=40, window_s=1.0, latency_ms=150.0, pages=200)
#: ``--quick``: a smoke test; the targets mean nothing at this size.
QUICK: Final = Limits(limit=10, window_s=1.0, latency_ms=20.0, pages=20)

NAMES: Final[dict[str, str]] = {"fetcher": "team_stats_source", "rest": "RESTClient"}


# -- the child: one pipeline, one timed step ----------------------------------------------------


def fetcher_settings(base_url: str, users_file: Path) -> dict[str, Any]:
    """``team_stats_source``'s settings: the export every contender makes."""
    return {
        "base_url": base_url,
        "users_file": str(users_file),
        "start": DAY,
        "end": DAY,
        "timezone": "UTC",
        "type": ["prospect"],
        "page_size": PAGE_SIZE,
        "user_batch_size": BATCH,
    }


def rest_resource(dlt: Any, base_url: str, bodies: Sequence[dict[str, Any]]) -> Any:
    """RESTClient's pages as a dlt resource with team_stats_source's key columns and hints."""
    from fetcher.integrations.dlt import PRIMARY_KEY, RESOURCE_NAME  # noqa: PLC0415

    def pages() -> Iterator[list[dict[str, Any]]]:
        for body, records in dlt_rest_pages(base_url, bodies):
            key = {
                "window_start": body["startDate"],
                "window_end": body["endDate"],
                "type": body["type"],
                "count_by": body["countBy"],
            }
            yield [{**key, "user_id": r.pop("userId"), **r} for r in records]

    window = {"data_type": "timestamp", "timezone": True, "nullable": False}
    return dlt.resource(
        pages(),
        name=RESOURCE_NAME,
        write_disposition="merge",
        primary_key=PRIMARY_KEY,
        columns={"window_start": window, "window_end": window},
    )


def child(args: argparse.Namespace) -> None:
    """Build a pipeline, time one step, count the rows; write a JSON report."""
    import dlt  # noqa: PLC0415  (the bench extra)
    import duckdb  # noqa: PLC0415
    import structlog  # noqa: PLC0415

    from fetcher.integrations.dlt import team_stats_source  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    work = Path(args.dir)
    database = work / f"{args.which}-{args.mode}.duckdb"
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{args.which}_{args.mode}",
        destination=dlt.destinations.duckdb(str(database)),
        dataset_name="saleshandy",
        pipelines_dir=str(work / "pipelines"),
    )
    if args.which == "fetcher":
        data = team_stats_source(**fetcher_settings(args.base_url, Path(args.users_file)))
    else:
        bodies = json.loads(Path(args.workload).read_text())
        data = rest_resource(dlt, args.base_url, bodies)
    started_at = time.time()
    started = time.perf_counter()
    if args.mode == "extract":
        pipeline.extract(data)
        seconds = time.perf_counter() - started
        pipeline.normalize()
        pipeline.load()
    else:
        pipeline.run(data)
        seconds = time.perf_counter() - started
    with duckdb.connect(str(database), read_only=True) as connection:
        counted = connection.execute(
            "SELECT count(*), count(DISTINCT (user_id, window_start)) FROM saleshandy.team_stats"
        ).fetchone()
    assert counted is not None
    report = {"seconds": seconds, "started_at": started_at, "rows": counted[0]}
    Path(args.report).write_text(json.dumps(report | {"distinct": counted[1]}))


# -- the parent: the scenario --------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One contender's timed step, measured and checked."""

    which: Which
    mode: Mode
    measured: Measured
    seconds: float
    started_at: float
    rows: int
    distinct: int
    expected: int
    requests: int
    refused: int

    @property
    def complete(self) -> bool:
        """Every expected row, each exactly once."""
        return self.rows == self.distinct == self.expected

    def figures(self) -> dict[str, Any]:
        """The step as JSON."""
        return {
            "contender": NAMES[self.which],
            "step": "pipeline.extract" if self.mode == "extract" else "pipeline.run",
            "seconds": round(self.seconds, 3),
            "complete": self.complete,
            "rows": self.rows,
            "requests": self.requests,
            "refused": self.refused,
            "process_wall_s": round(self.measured.wall_s, 3),
            "process_cpu_s": round(self.measured.cpu_s, 3),
        }


@dataclass(frozen=True)
class Stage:
    """One simulator and the export every contender makes of it."""

    sim: Simulator
    tmp: Path
    users_file: Path
    workload: Path

    @classmethod
    def of(cls, sim: Simulator, tmp: Path) -> Stage:
        """Write the users and RESTClient's workload: the queries fetcher's planner makes."""
        from fetcher.app.settings import load_settings  # noqa: PLC0415

        tmp.mkdir(parents=True, exist_ok=True)
        users_file = tmp / "users.txt"
        users_file.write_text("\n".join(sim.user_ids) + "\n")
        settings = load_settings(fetcher_settings(sim.base_url, users_file))
        specs = settings.queries(sim.user_ids)
        workload = tmp / "workload.json"
        write_workload(workload, [spec.body(1) for spec in specs])
        return cls(sim, tmp, users_file, workload)

    def step(self, which: Which, mode: Mode) -> Step:
        """Run one contender's step in a process of its own against the reset simulator."""
        self.sim.reset()
        report = self.tmp / f"{which}-{mode}.json"
        argv = [
            sys.executable, "-m", "benchmarks.bench_dlt", "--which", which, "--mode", mode,
            "--base-url", self.sim.base_url, "--users-file", str(self.users_file),
            "--workload", str(self.workload), "--dir", str(self.tmp), "--report", str(report),
        ]  # fmt: skip
        measured = measure(argv, env=bench_env(RUNTIME__DLTHUB_TELEMETRY="false"))
        measured.check(f"{NAMES[which]} {mode}")
        data = json.loads(report.read_text())
        stats = self.sim.stats()
        return Step(
            which, mode, measured, data["seconds"], data["started_at"], data["rows"],
            data["distinct"], len(self.sim.user_ids), stats["requests"], stats["rate_limited"],
        )  # fmt: skip


def steps(stage: Stage) -> dict[tuple[str, str], Step]:
    """Every contender's extract, then every contender's whole run."""
    modes: tuple[Mode, ...] = ("extract", "run")
    whiches: tuple[Which, ...] = ("fetcher", "rest")
    return {(w, m): stage.step(w, m) for m in modes for w in whiches}


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def latency_bound(limits: Limits, tmp: Path) -> dict[str, Any]:
    """(k1): no rate limit; RESTClient's time over team_stats_source's, extract and run."""
    users = limits.pages * PAGE_SIZE
    with simulator(team_size=users, extra=["--latency-ms", str(limits.latency_ms)]) as sim:
        done = steps(Stage.of(sim, tmp))
    extract = ratio(done["rest", "extract"].seconds, done["fetcher", "extract"].seconds)
    run = ratio(done["rest", "run"].seconds, done["fetcher", "run"].seconds)
    complete = all(step.complete for step in done.values())
    ok = extract >= SPEEDUP_TARGET and complete
    rows = [
        [
            f"pipeline.{mode}", f"{done['fetcher', mode].seconds:.2f}",
            f"{done['rest', mode].seconds:.2f}", f"{value:.1f}x",
            f">= {SPEEDUP_TARGET:g}x {verdict(ok)}" if mode == "extract" else "(reported)",
        ]
        for mode, value in (("extract", extract), ("run", run))
    ]  # fmt: skip
    rows.append(["rows (complete)", *(f"{done[w, 'run'].rows}" for w in ("fetcher", "rest")),
                 str(complete), "-"])  # fmt: skip
    print_table(
        f"(k1) dlt, latency-bound: {limits.pages} pages ({users:,} users, page size "
        f"{PAGE_SIZE}), {limits.latency_ms:g} ms latency, no rate limit, into DuckDB",
        ["step", "team_stats_source s", "RESTClient s", "speed-up", "target"],
        rows,
    )
    return {
        "extract_speedup": round(extract, 2),
        "run_speedup": round(run, 2),
        "complete": complete,
        "steps": [step.figures() for step in done.values()],
    }


def limit_bound(limits: Limits, tmp: Path) -> dict[str, Any]:
    """(k2): 40 per 1 s, whole-second resets; share of the limit, and the ratios."""
    users = limits.pages * PAGE_SIZE
    pages, queries = pages_for(users)
    with simulator(team_size=users, extra=server_args(limits)) as sim:
        done = steps(Stage.of(sim, tmp))
        windows = windows_of(sim.stats())

    latency = limits.latency_ms / 1000

    def utilisation(step: Step, *, probe: bool) -> float:
        # With the probe: the page 1s go one round trip after the call, when its answer
        # is in, and the probe is one more request of the key's budget.
        extra = 1 if probe and step.which == "fetcher" else 0
        lead = latency * extra
        ideal = lead + ideal_s(
            windows, start=step.started_at + lead, pages=pages + extra,
            first=queries + extra, quota=limits.limit, latency_s=latency,
        )  # fmt: skip
        return ideal / step.seconds

    share = {key: utilisation(step, probe=True) for key, step in done.items()}
    probe_free = {key: utilisation(step, probe=False) for key, step in done.items()}
    extract = ratio(done["rest", "extract"].seconds, done["fetcher", "extract"].seconds)
    run = ratio(done["rest", "run"].seconds, done["fetcher", "run"].seconds)
    complete = all(step.complete for step in done.values())
    ok = share["fetcher", "extract"] >= UTILISATION_TARGET and complete
    rows = [
        [
            f"pipeline.{mode}", f"{done['fetcher', mode].seconds:.2f}",
            f"{done['rest', mode].seconds:.2f}", f"{share['fetcher', mode]:.2f}",
            f"{probe_free['fetcher', mode]:.2f}", f"{share['rest', mode]:.2f}", f"{value:.1f}x",
            done["fetcher", mode].refused,
            f">= {UTILISATION_TARGET:g} {verdict(ok)}" if mode == "extract" else "(reported)",
        ]
        for mode, value in (("extract", extract), ("run", run))
    ]  # fmt: skip
    print_table(
        f"(k2) dlt, limit-bound: {pages} pages, {limits.rate} aligned windows (phase "
        f"{windows.phase_s:g} s), whole-second resets, {limits.latency_ms:g} ms latency; "
        f"rows complete: {complete}",
        ["step", "team_stats_source s", "RESTClient s", "of the limit",
         "(ideal without the probe)", "(RESTClient)", "speed-up", "429s", "target"],
        rows,
    )  # fmt: skip
    return {
        "of_the_limit": {f"{NAMES[w]} {m}": round(value, 3) for (w, m), value in share.items()},
        "of_the_limit_without_the_probe": {
            f"{NAMES[w]} {m}": round(value, 3) for (w, m), value in probe_free.items()
        },
        "extract_speedup": round(extract, 2),
        "run_speedup": round(run, 2),
        "complete": complete,
        "steps": [step.figures() for step in done.values()],
    }


def scenario_k(_sizes: object, tmp: Path, *, quick: bool = False, **_: Any) -> dict[str, Any]:
    """(k) fetcher as a dlt source against dlt's RESTClient: extract and whole run."""
    from benchmarks._harness import optional  # noqa: PLC0415

    if optional("dlt") is None:
        print("\n(k) dlt: skipped: dlt is not installed (pip install -e '.[bench]')")
        return {"skipped": "dlt is not installed"}
    limits = QUICK if quick else FULL
    return {
        "pages": limits.pages,
        "latency_bound": latency_bound(limits, tmp / "latency"),
        "limit_bound": limit_bound(limits, tmp / "limit"),
    }


SCENARIOS: Final[dict[str, Callable[..., dict[str, Any]]]] = {"k": scenario_k}


def main(argv: Sequence[str] | None = None) -> None:
    """The child role: one contender, one step (see :func:`child`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["fetcher", "rest"], required=True)
    parser.add_argument("--mode", choices=["extract", "run"], required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--users-file", required=True)
    parser.add_argument("--workload", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--report", required=True)
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    child(parser.parse_args(argv))


if __name__ == "__main__":
    main()
