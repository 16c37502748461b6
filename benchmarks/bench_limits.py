"""Rate limits in the wild (issue 14): scenarios (e) to (i) of ``python -m benchmarks.run``.

Every scenario starts ``python -m fetcher.simulator`` with fixed windows aligned on
the wall clock at a fixed phase (:data:`PHASE_S`, so that the figures reproduce) and
``x-ratelimit-reset`` in whole seconds rounded up, as NestJS sends it; fetcher runs
as real ``fetcher export`` processes that follow the headers (no ``--rate-limit``),
and every output is checked: one row per user, none missing, none twice.

(e) 40 requests per 1 s window, 200 pages, 150 ms latency; hits counted on arrival,
    and on a second server when answered. Targets: at least 0.9 of the limit, at
    most 2% of requests refused.
(f) the same at 20 per 2 s, 600 pages. Targets: at least 0.95, at most 2% refused.
(g) two processes started together on one key, 100 pages each, 20 per 2 s, 100 ms
    latency, no shared limiter. Targets: together at least 0.8 of the limit, at most
    5% refused, the slower at most 1.3x the faster, and once one has finished the
    other back at 0.9 of the limit within two windows.
(h) (g) with ``--shared-limiter`` on the local Redis, two and four processes. Skipped,
    saying so, while ``fetcher export --help`` does not list the option. Targets:
    together at least 0.9 of the limit, zero refused.
(i) a foreign client spending half of the key's budget (``--foreign-share 0.5``),
    40 per 1 s, 200 pages, 150 ms latency. Target: at least 0.85 of what the foreign
    client leaves (20 per window).

"Of the limit" is the ideal time over the fetch time (the run report's
``duration_s``); :func:`ideal_s` computes the ideal, phase included. Each run's
per-window traffic comes from the simulator's event log (``?events=1``).

:class:`FetcherUnderTest` runs the fetcher of another tree when given its root
(``--fetcher-root PATH``: the processes run with ``PYTHONPATH=PATH``), against this
tree's simulator: that is how the "before" figures are measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from benchmarks._harness import print_table, simulator, verdict
from benchmarks._limits import (
    PAGE_SIZE,
    Export,
    FetcherUnderTest,
    Traffic,
    Windows,
    clock_offset,
    export_args,
    finish,
    ideal_s,
    pages_for,
    redis_answers,
    run_together,
    windows_of,
)

#: Where aligned windows start, seconds modulo the window: arbitrary, but fixed.
PHASE_S: Final = 0.37
SHARED_LIMITER: Final = "redis://127.0.0.1:6379/0"

CountOn = Literal["arrival", "answer"]


@dataclass(frozen=True)
class Limits:
    """One scenario's server and size: ``limit`` hits per ``window_s``, and pages per process."""

    limit: int
    window_s: float
    latency_ms: float
    pages: int

    @property
    def rate(self) -> str:
        return f"{self.limit} / {self.window_s:g} s"


_SHARED_KEY: Final = Limits(limit=20, window_s=2.0, latency_ms=100.0, pages=100)
_SHARED_KEY_QUICK: Final = Limits(limit=10, window_s=2.0, latency_ms=20.0, pages=20)
#: Per scenario; (h) is (g) with the shared limiter.
FULL: Final[dict[str, Limits]] = {
    "e": Limits(limit=40, window_s=1.0, latency_ms=150.0, pages=200),
    "f": Limits(limit=20, window_s=2.0, latency_ms=150.0, pages=600),
    "g": _SHARED_KEY,
    "h": _SHARED_KEY,
    "i": Limits(limit=40, window_s=1.0, latency_ms=150.0, pages=200),
}
#: ``--quick``: a smoke test, the targets mean nothing at these sizes.
QUICK: Final[dict[str, Limits]] = {
    "e": Limits(limit=10, window_s=1.0, latency_ms=20.0, pages=30),
    "f": Limits(limit=10, window_s=2.0, latency_ms=20.0, pages=30),
    "g": _SHARED_KEY_QUICK,
    "h": _SHARED_KEY_QUICK,
    "i": Limits(limit=20, window_s=1.0, latency_ms=20.0, pages=40),
}
#: The share of the key's budget the foreign client of (i) spends.
FOREIGN_SHARE: Final = 0.5


def server_args(
    limits: Limits, *, count_on: CountOn = "arrival", foreign: float = 0.0
) -> list[str]:
    """The simulator's flags: aligned windows at :data:`PHASE_S`, whole-second resets, warm."""
    args = [
        "--latency-ms", str(limits.latency_ms),
        "--rate-limit", str(limits.limit), "--rate-window", str(limits.window_s),
        "--rate-window-mode", "aligned", "--rate-window-phase", str(PHASE_S),
        "--reset-format", "seconds", "--rate-count-on", count_on,
        # Figures computed before serving: first pages answered in their latency, as the
        # ideal has them (computed on first use, 40 ms per 1,000 users of the server's CPU).
        "--warm",
    ]  # fmt: skip
    return [*args, "--foreign-share", str(foreign)] if foreign else args


def lag(traffic: Traffic) -> str:
    return "-" if traffic.lag_s is None else f"{1000 * traffic.lag_s:.0f}"


def max_window(traffic: Traffic, limit: int) -> str:
    """``max_in_window / limit``, and whether the window was exceeded."""
    over = " EXCEEDED" if traffic.max_in_window > limit else ""
    return f"{traffic.max_in_window}/{limit}{over}"


# -- (e), (f): one process, counted on arrival and when answered ---------------------------------


def one_process(
    which: str, limits: Limits, tmp: Path, fetcher: FetcherUnderTest, *, utilisation: float
) -> dict[str, Any]:
    """One export per counting rule, each on its own server; utilisation and refusals."""
    users = limits.pages * PAGE_SIZE
    pages, queries = pages_for(users)
    rows, figures = [], []
    for count_on in ("arrival", "answer"):
        with simulator(team_size=users, extra=server_args(limits, count_on=count_on)) as sim:
            stage = tmp / count_on
            stage.mkdir(parents=True, exist_ok=True)
            offset = clock_offset()
            sim.reset()
            fetcher.wait_to_launch(sim)
            measured = fetcher.run(export_args(sim, stage, "fetcher", sim.user_ids), stage)
            run = finish("fetcher", stage, measured, users)
            stats = sim.stats(events=True)
        windows = windows_of(stats)
        traffic = Traffic.of(stats, windows, offset)
        ideal = ideal_s(
            windows, start=run.started, pages=pages, first=queries, quota=limits.limit,
            latency_s=limits.latency_ms / 1000, count_on=count_on,
        )  # fmt: skip
        share = ideal / run.fetch_s
        ok = share >= utilisation and run.complete
        polite = traffic.refused_share <= 0.02
        target = f">={utilisation:g} {verdict(ok)}; <=2% refused {verdict(polite)}"
        rows.append([
            count_on, run.records, run.complete, traffic.requests,
            f"{traffic.refused} ({100 * traffic.refused_share:.1f}%)",
            max_window(traffic, limits.limit), f"{run.fetch_s:.2f}", f"{ideal:.2f}",
            f"{share:.2f}", traffic.idle_windows, lag(traffic), target,
        ])  # fmt: skip
        figures.append(
            run.figures()
            | {
                "count_on": count_on,
                "ideal_s": round(ideal, 3),
                "utilisation": round(share, 3),
                "start_in_window_s": round(run.started - windows.opening(run.started), 3),
                "traffic": traffic.figures(),
            }
        )
    print_table(
        f"({which}) whole-second resets: {limits.rate} aligned at {PHASE_S:g} s, {pages} pages, "
        f"{limits.latency_ms:g} ms latency; fetcher {fetcher.label}",
        ["hits counted on", "records", "complete", "requests", "refused", "max / window",
         "fetch s", "ideal s", "of the limit", "idle windows", "lag ms", "target"],
        rows,
    )  # fmt: skip
    return {"pages": pages, "limit": limits.limit, "window_s": limits.window_s, "runs": figures}


def scenario_e(
    _sizes: object, tmp: Path, *, quick: bool = False, fetcher: FetcherUnderTest, **_: Any
) -> dict[str, Any]:
    """(e) whole-second resets at 40 per 1 s, aligned at a phase: at least 0.9 of the limit."""
    limits = (QUICK if quick else FULL)["e"]
    return {"fetcher": fetcher.label} | one_process("e", limits, tmp, fetcher, utilisation=0.9)


def scenario_f(
    _sizes: object, tmp: Path, *, quick: bool = False, fetcher: FetcherUnderTest, **_: Any
) -> dict[str, Any]:
    """(f) the same at 20 per 2 s, 600 pages: at least 0.95 of the limit."""
    limits = (QUICK if quick else FULL)["f"]
    return {"fetcher": fetcher.label} | one_process("f", limits, tmp, fetcher, utilisation=0.95)


# -- (g), (h): processes sharing one key ---------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One figure against its target, for a table."""

    figure: str
    value: str
    target: str
    ok: bool | None  # None: nothing to judge (e.g. no window left to measure)

    def row(self) -> list[str]:
        return [self.figure, self.value, self.target, "-" if self.ok is None else verdict(self.ok)]


def after_first(
    traffic: Traffic, runs: Sequence[Export], limit: int, windows: Windows
) -> list[dict[str, Any]]:
    """The two windows that open after the first process finished: admitted over possible.

    Possible is the limit, or the pages still to fetch when the window opens if fewer
    (every 200 after the first process finished is the others').
    """
    ended = min(run.finished for run in runs)
    k1 = windows.index(ended) + 1
    by_index = {w.index: w for w in traffic.windows}
    out = []
    for k in (k1, k1 + 1):
        left = sum(w.ok for w in traffic.windows if w.index >= k)
        possible = min(limit, left)
        ok = by_index[k].ok if k in by_index else 0
        out.append({
            "window": k - k1 + 1, "ok": ok, "possible": possible,
            "share": None if possible == 0 else round(ok / possible, 3),
        })  # fmt: skip
    return out


def processes(
    limits: Limits,
    tmp: Path,
    fetcher: FetcherUnderTest,
    count: int,
    *extra: str,
    together_target: float,
    refused_target: float,
    fairness: bool,
) -> tuple[list[list[Any]], list[Target], dict[str, Any]]:
    """``count`` exports of ``limits.pages`` each, started together on one key.

    ``fairness``: judge slower / faster and the recovery after the first finished
    ((g)'s targets); otherwise they are shown, not judged.

    Returns the per-process rows, the targets, and the figures as JSON.
    """
    users = limits.pages * PAGE_SIZE
    with simulator(team_size=users * count, extra=server_args(limits)) as sim:
        offset = clock_offset()
        runs = run_together(
            fetcher, sim, tmp / f"{count}", [f"process {n + 1}" for n in range(count)], *extra
        )
        stats = sim.stats(events=True)
    windows = windows_of(stats)
    traffic = Traffic.of(stats, windows, offset)
    pages, queries = pages_for(users)
    start, end = min(r.started for r in runs), max(r.finished for r in runs)
    ideal = ideal_s(
        windows, start=start, pages=pages * count, first=queries * count, quota=limits.limit,
        latency_s=limits.latency_ms / 1000,
    )  # fmt: skip
    together = ideal / (end - start)
    durations = sorted(r.fetch_s for r in runs)
    spread = durations[-1] / durations[0]
    complete = all(r.complete for r in runs)
    rows = [
        [
            r.name, r.records, r.complete, r.report["requests"],
            (r.report.get("rate_limit") or {}).get("refusals", "-"),
            f"{r.started - start:.2f}", f"{r.fetch_s:.2f}", f"{r.measured.wall_s:.2f}",
        ]
        for r in runs
    ]  # fmt: skip
    targets = [
        Target(
            "together (ideal / first start to last finish)",
            f"{together:.2f} ({ideal:.2f} s / {end - start:.2f} s; started "
            f"{start - windows.opening(start):.2f} s into a window)",
            f">= {together_target:g}",
            together >= together_target and complete,
        ),
        Target(
            "refused (of all requests)",
            f"{traffic.refused} of {traffic.requests} ({100 * traffic.refused_share:.1f}%)",
            "zero" if refused_target == 0 else f"<= {100 * refused_target:g}%",
            traffic.refused_share <= refused_target,
        ),
        Target(
            "slower / faster (fetch s)",
            f"{spread:.2f}x ({durations[-1]:.2f} / {durations[0]:.2f})",
            "<= 1.3x" if fairness else "-",
            spread <= 1.3 if fairness else None,
        ),
        Target(
            "busiest window (max_in_window)",
            max_window(traffic, limits.limit),
            f"<= {limits.limit}",
            traffic.max_in_window <= limits.limit,
        ),
    ]
    recovery = after_first(traffic, runs, limits.limit, windows)
    shares = [w["share"] for w in recovery if w["share"] is not None]
    targets.append(
        Target(
            "after the first finished: windows 1, 2 (admitted / possible)",
            ", ".join(
                "-" if w["share"] is None else f"{w['share']:.2f} ({w['ok']}/{w['possible']})"
                for w in recovery
            ),
            ">= 0.9 within two windows" if fairness else "-",
            max(shares) >= 0.9 if shares and fairness else None,
        )
    )
    figures = {
        "processes": count,
        "pages": pages * count,
        "ideal_s": round(ideal, 3),
        "span_s": round(end - start, 3),
        "together": round(together, 3),
        "start_in_window_s": round(start - windows.opening(start), 3),
        "slower_over_faster": round(spread, 3),
        "after_first_finished": recovery,
        "runs": [r.figures() for r in runs],
        "traffic": traffic.figures(),
        "targets": {t.figure: t.ok for t in targets},
    }
    return rows, targets, figures


PROCESS_HEADER: Final = [
    "process", "records", "complete", "requests", "refusals", "started +s", "fetch s", "wall s",
]  # fmt: skip


def scenario_g(
    _sizes: object, tmp: Path, *, quick: bool = False, fetcher: FetcherUnderTest, **_: Any
) -> dict[str, Any]:
    """(g) two processes on one key, no shared limiter: together, fairness, recovery."""
    limits = (QUICK if quick else FULL)["g"]
    rows, targets, figures = processes(
        limits, tmp, fetcher, 2, together_target=0.8, refused_target=0.05, fairness=True
    )
    title = (
        f"(g) two processes on one key, {limits.pages} pages each, {limits.rate} aligned at "
        f"{PHASE_S:g} s, whole-second resets, {limits.latency_ms:g} ms latency, no shared "
        f"limiter; fetcher {fetcher.label}"
    )
    print_table(title, PROCESS_HEADER, rows)
    print_table("(g) targets", ["figure", "value", "target", ""], [t.row() for t in targets])
    return {"fetcher": fetcher.label} | figures


def scenario_h(
    _sizes: object, tmp: Path, *, quick: bool = False, fetcher: FetcherUnderTest, **_: Any
) -> dict[str, Any]:
    """(h) two and four processes with ``--shared-limiter`` on Redis, when fetcher has it."""
    limits = (QUICK if quick else FULL)["h"]
    title = (
        f"(h) 2 and 4 processes on one key with --shared-limiter {SHARED_LIMITER}, "
        f"{limits.pages} pages each, {limits.rate} aligned at {PHASE_S:g} s, whole-second "
        f"resets, {limits.latency_ms:g} ms latency; fetcher {fetcher.label}"
    )
    skipped = None
    if not fetcher.has_option("--shared-limiter"):
        skipped = "skipped: fetcher has no --shared-limiter yet"
    elif not redis_answers(SHARED_LIMITER):
        skipped = f"skipped: no Redis answers at {SHARED_LIMITER}"
    if skipped is not None:
        print_table(title, ["processes", "result"], [[2, skipped], [4, skipped]])
        return {"fetcher": fetcher.label, "skipped": skipped}
    results = []
    for count in (2, 4):
        rows, targets, figures = processes(
            limits, tmp, fetcher, count, "--shared-limiter", SHARED_LIMITER,
            together_target=0.9, refused_target=0.0, fairness=False,
        )  # fmt: skip
        print_table(title if count == 2 else f"(h) {count} processes", PROCESS_HEADER, rows)
        print_table(
            f"(h) {count} processes: targets", ["figure", "value", "target", ""],
            [t.row() for t in targets],
        )  # fmt: skip
        results.append(figures)
    return {"fetcher": fetcher.label, "runs": results}


# -- (i): a foreign client on the key ------------------------------------------------------------


def scenario_i(
    _sizes: object, tmp: Path, *, quick: bool = False, fetcher: FetcherUnderTest, **_: Any
) -> dict[str, Any]:
    """(i) a foreign client spends half of the key's budget: fetcher against what it leaves."""
    limits = (QUICK if quick else FULL)["i"]
    users = limits.pages * PAGE_SIZE
    pages, queries = pages_for(users)
    # What the foreign client leaves of each window, in whole requests.
    left = math.floor(limits.limit * (1 - FOREIGN_SHARE) + 1e-9)
    server = server_args(limits, foreign=FOREIGN_SHARE)
    with simulator(team_size=users, extra=server) as sim:
        tmp.mkdir(parents=True, exist_ok=True)
        offset = clock_offset()
        sim.reset()
        fetcher.wait_to_launch(sim)
        measured = fetcher.run(export_args(sim, tmp, "fetcher", sim.user_ids), tmp)
        run = finish("fetcher", tmp, measured, users)
        stats = sim.stats(events=True)
    windows = windows_of(stats)
    traffic = Traffic.of(stats, windows, offset)
    ideal = ideal_s(
        windows, start=run.started, pages=pages, first=queries, quota=left,
        latency_s=limits.latency_ms / 1000,
    )  # fmt: skip
    share = ideal / run.fetch_s
    foreign = traffic.foreign_admitted + traffic.foreign_refused
    foreign_got = traffic.foreign_admitted / foreign if foreign else 0.0
    target = f">=0.85 {verdict(share >= 0.85 and run.complete)}"
    print_table(
        f"(i) a foreign client spending {FOREIGN_SHARE:g} of the key's budget: "
        f"{limits.rate} aligned at {PHASE_S:g} s (leaves {left} per window), whole-second "
        f"resets, {pages} pages, {limits.latency_ms:g} ms latency; fetcher {fetcher.label}",
        ["client", "records", "complete", "requests", "refused", "foreign admitted / tried",
         "max / window", "fetch s", f"ideal s ({left} / window)", "of what is left",
         "idle windows", "lag ms", "target"],
        [[
            "fetcher", run.records, run.complete, traffic.requests,
            f"{traffic.refused} ({100 * traffic.refused_share:.1f}%)",
            f"{traffic.foreign_admitted} / {foreign} ({100 * foreign_got:.0f}%)",
            max_window(traffic, limits.limit), f"{run.fetch_s:.2f}", f"{ideal:.2f}",
            f"{share:.2f}", traffic.idle_windows, lag(traffic), target,
        ]],
    )  # fmt: skip
    return {
        "fetcher": fetcher.label,
        "pages": pages,
        "foreign_share": FOREIGN_SHARE,
        "left_per_window": left,
        "ideal_s": round(ideal, 3),
        "of_what_is_left": round(share, 3),
        "foreign_admitted_share": round(foreign_got, 3),
        "run": run.figures(),
        "traffic": traffic.figures(),
    }


SCENARIOS: Final[dict[str, Callable[..., dict[str, Any]]]] = {
    "e": scenario_e,
    "f": scenario_f,
    "g": scenario_g,
    "h": scenario_h,
    "i": scenario_i,
}
