"""The benchmark harness works end to end (tiny sizes; nothing about speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks._harness import measure
from benchmarks.run import Run, have_dlt, jsonl_counts, pages_of

ROOT = Path(__file__).resolve().parent.parent


def bench_lines(stdout: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("BENCH ") :])
        for line in stdout.splitlines()
        if line.startswith("BENCH ")
    ]


def run_quick(scenario: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks.run --quick --scenario SCENARIO`, which must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--scenario", scenario],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_quick_scenario_a_runs_every_contender_to_a_complete_output() -> None:
    """`python -m benchmarks.run --quick --scenario a` runs every contender to a whole output."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--scenario", "a"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(a) latency-bound" in result.stdout
    [line] = bench_lines(result.stdout)
    assert line["benchmark"] == "scenario_a"
    assert line["machine"]["cpus"] >= 1
    names = [run["name"] for run in line["runs"]]
    with_dlt = have_dlt()
    assert names == ["fetcher", "fetcher -c1", "aiohttp", *(["dlt"] if with_dlt else [])]
    for run in line["runs"]:
        assert run["complete"], run
        assert run["records"] == run["expected"] == 200
        assert run["peak_rss_mb"] > 0
    if not with_dlt:
        assert "skipped: dlt not installed" in result.stdout


def test_measure_reports_the_childs_own_memory_and_cpu() -> None:
    """measure() reports the child's exit code, CPU and peak memory, not the parent's."""
    code = "import time; x = bytearray(80 * 2**20); time.sleep(0.3); raise SystemExit(3)"
    measured = measure([sys.executable, "-c", code])
    assert measured.returncode == 3
    assert measured.cpu_s > 0
    assert 80 <= measured.peak_rss_mb < 400
    assert measured.samples >= 1


def test_completeness_counts_a_repeated_row_once(tmp_path: Path) -> None:
    """A contender that writes a row twice (or misses one) is not complete."""
    out = tmp_path / "out.jsonl"
    rows = [
        {"userId": "a", "_window_start": "2024-01-01"},
        {"userId": "b", "_window_start": "2024-01-01"},
        {"userId": "a", "_window_start": "2024-01-01"},
    ]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    records, distinct = jsonl_counts(out)
    assert (records, distinct) == (3, 2)
    run = Run("x", measure([sys.executable, "-c", "pass"]), 3, records, distinct, None, 0, 0)
    assert not run.complete


def test_pages_of_pages_each_user_batch_on_its_own() -> None:
    """The page count follows fetcher's user batches: 2,500 users in 1,000s at 10 a page."""
    assert pages_of(2500, 10) == 250
    assert pages_of(2005, 10) == 201
    assert pages_of(50_000, 1000, batch=1000) == 50


@pytest.mark.slow
def test_quick_scenario_j_streams_pages_and_emits_its_bench_line() -> None:
    """`python -m benchmarks.run --quick --scenario j` measures both figures of a whole output."""
    result = run_quick("j", timeout=120)
    assert "(j1) memory" in result.stdout
    assert "(j2) time to first page written" in result.stdout
    [line] = bench_lines(result.stdout)
    assert line["benchmark"] == "scenario_j"
    memory, first = line["memory"], line["first_page"]
    assert memory["complete"]
    assert memory["peak_rss_mb"]["small"] > 0
    assert memory["peak_rss_mb"]["large"] > 0
    assert first["complete"]
    for run in (*memory["runs"], *first["runs"]):
        assert run["records"] == run["expected"], run
    # The first record was seen in the .partial file, after the first request.
    assert 0 < first["to_first_request_s"] < first["to_first_record_s"] < first["wall_s"]


@pytest.mark.slow
def test_quick_scenario_k_runs_both_dlt_pipelines_to_a_complete_table() -> None:
    """`--quick --scenario k`: both pipelines, extract and run, each load every row once."""
    if not have_dlt():
        pytest.skip("dlt is not installed (the `dlt` and `dev` extras have it)")
    result = run_quick("k", timeout=180)
    assert "(k1) dlt, latency-bound" in result.stdout
    assert "(k2) dlt, limit-bound" in result.stdout
    [line] = bench_lines(result.stdout)
    assert line["benchmark"] == "scenario_k"
    for part in ("latency_bound", "limit_bound"):
        steps = line[part]["steps"]
        assert {(s["contender"], s["step"]) for s in steps} == {
            (contender, step)
            for contender in ("team_stats_source", "RESTClient")
            for step in ("pipeline.extract", "pipeline.run")
        }
        for step in steps:
            assert step["complete"] and step["rows"] == 200, step
            assert step["seconds"] > 0
        # one probe of the member list, then the 20 pages (refusals are asked again)
        answered = [s["requests"] - s["refused"] for s in steps]
        assert answered == [21, 20, 21, 20]  # team_stats_source, RESTClient; extract, run


def test_launch_at_waits_until_that_far_into_the_servers_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--launch-at``: the processes go at that point of the server's window, not at once."""
    from benchmarks import _limits  # noqa: PLC0415

    class Server:
        def stats(self) -> dict[str, Any]:
            return {"rate": {"window_s": 2.0, "phase_s": 0.37}}

    slept: list[float] = []
    monkeypatch.setattr("benchmarks._limits.time.time", lambda: 1000.0)  # 1.63 s into one
    monkeypatch.setattr("benchmarks._limits.time.sleep", slept.append)
    for launch_at in (1.8, 0.5, None):
        _limits.FetcherUnderTest(launch_at=launch_at).wait_to_launch(Server())  # type: ignore[arg-type]
    assert slept == [pytest.approx(0.17), pytest.approx(0.87)]


def test_the_ideal_counts_a_hit_where_the_server_counts_it() -> None:
    """Counted on answer, a burst answered after the first window's end counts in the next.

    40 per 1 s, 150 ms latency, 200 pages. Started 0.75 s into a window, page 1 is
    answered at 0.9 s: on arrival the burst after it fits the first window (five
    windows in all); counted on answer it is counted at 1.05 s, in the second, and
    the run needs six. Started early in a window the two agree.
    """
    from benchmarks._limits import Windows, ideal_s  # noqa: PLC0415

    windows = Windows(window_s=1.0, phase_s=0.0)

    def ideal(start: float, count_on: str = "arrival") -> float:
        return ideal_s(
            windows, start=start, pages=200, first=1, quota=40, latency_s=0.15, count_on=count_on
        )

    assert ideal(1000.75) == pytest.approx(3.4)
    assert ideal(1000.75, "answer") == pytest.approx(4.4)
    assert ideal(1000.2, "answer") == pytest.approx(ideal(1000.2))
