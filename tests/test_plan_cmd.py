"""`fetcher plan`: the export's queries and estimates, with nothing sent past page 1."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fetcher.app.cli import ExitCode
from fetcher.app.plan import QueryEstimate, RunPlan, ServerLimit
from fetcher.app.settings import load_settings
from fetcher.http.limiter import Rate
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from tests.test_check import closed_port
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.toml"


def pinned_example(tmp_path: Path) -> Path:
    """example.toml with its "last 7 days" pinned to one fixed week.

    The simulator's faults hash the query, dates included: against "last 7 days"
    which pages fail (and so what a run sends) would change with the day the
    suite runs. Every other setting is the file's own.
    """
    text = EXAMPLE.read_text()
    assert 'window = "last 7 days"' in text
    pinned = tmp_path / "example-pinned.toml"
    pinned.write_text(
        text.replace('window = "last 7 days"', 'start = "2026-03-02"\nend = "2026-03-08"')
    )
    return pinned


def example_simulator() -> SimulatorConfig:
    """The simulator config/example.toml describes, to run on a port the test can watch."""
    knobs = load_settings({}, config_file=EXAMPLE).simulator
    return SimulatorConfig(
        seed=knobs.seed,
        team_size=knobs.team_size,
        latency_ms=knobs.latency_ms,
        rate_limit=knobs.rate_limit,
        rate_window_s=knobs.rate_window_s,
        fault_rate=knobs.fault_rate,
    )


async def plan_json(sim: RunningSimulator, cwd: Path, *extra: str) -> dict[str, Any]:
    config = pinned_example(cwd)
    result = await run_cli(
        ["plan", "--config", str(config), "--base-url", sim.base_url, "--json", *extra], cwd=cwd
    )
    assert result.returncode == ExitCode.OK, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def test_plan_sends_only_page_one_and_estimates_a_real_run(tmp_path: Path) -> None:
    """On example.toml, plan asks for page 1 of each query once; a real run matches it."""
    async with serve(example_simulator()) as sim:
        plan = await plan_json(sim, tmp_path)
        traffic = sim.stats.snapshot()
        sim.reset()
        report = tmp_path / "report.json"
        export = await run_cli(
            [
                "export",
                "--config",
                str(pinned_example(tmp_path)),
                "--base-url",
                sim.base_url,
                "--out",
                str(tmp_path / "s.jsonl"),
                "--report",
                str(report),
            ],
            cwd=tmp_path,
        )
        real_requests = sim.stats.requests
    assert export.returncode == ExitCode.OK, export.stderr
    assert not (tmp_path / "fetcher-example").exists()  # plan wrote nothing

    # 7 days x 2 types x 240 users in batches of 50 (5 batches).
    assert (plan["slices"], plan["user_batches"], plan["queries"]) == (7, 5, 70)
    # Nothing past page 1, page 1 of each query at most once, plus the team list.
    pages = traffic["pages"]
    assert {p["page"] for p in pages} == {1}
    assert all(p["requests"] == 1 for p in pages)
    assert len(pages) == plan["queries"]
    assert traffic["requests"] == plan["queries"] + 1 == plan["requests_sent"]

    data = json.loads(report.read_text())
    assert plan["pages"] == data["pages"]  # every user has a row: the estimate is exact
    assert abs(plan["requests"] - real_requests) <= 0.2 * real_requests
    assert plan["server_limit"] == {"limit": 50, "window_s": 1.0}
    assert plan["min_run_s"] is not None and plan["min_run_s"] > 0


async def test_requests_sent_counts_requests_that_got_no_answer(tmp_path: Path) -> None:
    """A probe whose connection was dropped was still sent: requests_sent counts it."""
    config = SimulatorConfig(team_size=10, fault_rate=1.0, fault_kinds=("reset",))
    async with serve(config) as sim:
        args = [
            "plan", "--base-url", sim.base_url, "--users", ",".join(sim.user_ids),
            "--start", "2026-03-02", "--end", "2026-03-04", "--slice", "day", "--json",
        ]  # fmt: skip
        result = await run_cli(args, cwd=tmp_path)
        requests = sim.stats.requests
    assert result.returncode == ExitCode.OK, result.stderr
    plan = json.loads(result.stdout)
    assert plan["queries"] == 3
    assert requests == plan["requests_sent"] == 3  # one probe each, none answered


async def test_no_probe_sends_only_the_team_list_and_estimates_from_users(tmp_path: Path) -> None:
    """--no-probe estimates users / page size per query, fetching only the team list."""
    async with serve(example_simulator()) as sim:
        plan = await plan_json(sim, tmp_path, "--no-probe")
        requests = sim.stats.requests
    assert requests == 1  # GET /v1/user/team-member-list
    assert plan["probed"] is False and plan["exact_queries"] == 0
    # Per window and type: batches of 50, 50, 50, 50, 40 users at 20 a page.
    assert plan["pages"] == 7 * 2 * (4 * 3 + 2)


async def test_no_probe_with_listed_users_sends_nothing_and_needs_no_key(tmp_path: Path) -> None:
    """With users given and --no-probe, plan needs neither the API nor a key."""
    result = await run_cli(
        [
            "plan",
            "--base-url",
            f"http://127.0.0.1:{closed_port()}",
            "--users",
            "a,b,c",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-31",
            "--slice",
            "week",
            "--type",
            "prospect,email",
            "--page-size",
            "2",
            "--rate-limit",
            "10/s",
            "--no-probe",
        ],
        key=None,
        cwd=tmp_path,
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert "queries   10 = 5 slice(s) x 2 type(s) x 1 batch(es)" in result.stdout
    assert "pages     20" in result.stdout
    assert "1.0 s at the configured rate limit (10 requests/s)" in result.stdout  # 2 x 10 in 1 s
    assert "this plan sent 0 request(s)" in result.stdout


async def test_plan_runs_example_toml_on_a_fresh_clone(tmp_path: Path) -> None:
    """`fetcher plan --config config/example.toml` works with the built-in simulator."""
    result = await run_cli(["plan", "--config", str(EXAMPLE)], key=None, cwd=tmp_path)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "queries   70 = 7 slice(s) x 2 type(s) x 5 batch(es)" in result.stdout
    assert "min time" in result.stdout
    assert not (tmp_path / "fetcher-example").exists()


async def test_plan_with_a_refused_key_exits_3(tmp_path: Path) -> None:
    """A bad key stops the plan at the first request, with the auth exit code."""
    async with serve(SimulatorConfig(team_size=10)) as sim:
        result = await run_cli(
            ["plan", "--base-url", sim.base_url, "--users", sim.user_ids[0], "--window", "today"],
            key="not-the-key",
            cwd=tmp_path,
        )
        requests = sim.stats.requests
    assert result.returncode == ExitCode.AUTH
    assert "refused the key" in result.stderr
    assert requests == 1


def test_minimum_time_is_the_largest_bound() -> None:
    """The minimum run time is the slowest of the rate, the server limit and the latency."""
    day = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    queries = tuple(
        QueryEstimate(
            key=f"q{i}",
            type="prospect",
            window_start=day,
            window_end=day,
            users=600,
            pages=60,
            exact=True,
        )
        for i in range(2)
    )
    plan = RunPlan(
        base_url="x",
        queries=queries,
        window=(day, day),
        slice_unit=None,
        timezone="UTC",
        types=("prospect",),
        users=600,
        batch_size=1000,
        team_list=False,
        probed=True,
        rate=Rate.parse("10/s"),
        concurrency=4,
        server_limit=ServerLimit(limit=50, window_s=1.0),
        latency_s=0.2,
    )
    assert plan.requests == 120
    assert plan.min_run_s_configured == pytest.approx(11.0)  # 12 spans of 10, 11 waited out
    assert plan.min_run_s_server == 2.0  # 3 windows of 50, 2 waited out
    assert plan.min_run_s_latency == pytest.approx(6.0)  # 30 rounds of 4 x 0.2 s
    assert plan.min_run_s == pytest.approx(11.0)
    assert replace(plan, rate=None).min_run_s == pytest.approx(6.0)


async def test_plan_catch_up_without_a_state_file_is_refused_like_export(tmp_path: Path) -> None:
    """`fetcher plan --catch-up` reads the ledger export reads, so it needs the same state file."""
    args = ["--base-url", "simulator", "--users", "a", "--window", "yesterday", "--catch-up"]
    result = await run_cli(["plan", *args, "--no-probe"], key=None, cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    assert "--catch-up needs a state file" in result.stderr
