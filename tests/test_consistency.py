"""Issue 8: moving data during pagination, and alarms when the API's shape changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fetcher import MemorySink, export
from fetcher.app.cli import ExitCode
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from tests.integration import KEY, assert_same_rows, read_jsonl, spec_for
from tests.test_cli import run_cli


def export_args(sim: RunningSimulator, out: Path, *extra: str) -> list[str]:
    return [
        "export", "--base-url", sim.base_url, "--all-users",
        "--start", "2024-01-01", "--end", "2024-01-03", "--slice", "day",
        "--page-size", "10", "--out", str(out), "--report", str(out.with_suffix(".json")),
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_drift_still_gives_every_user_exactly_once(seed: int) -> None:
    """Counts that move mid-run reorder pages; the output still has each user once."""
    config = SimulatorConfig(seed=seed, team_size=180, drift=2.0, latency_ms=3)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        sink = MemorySink()
        summary = await export(spec, sink, api_key=KEY, base_url=sim.base_url, concurrency=4)
    ids = [r["userId"] for r in sink.records]
    assert summary.ok
    assert sorted(ids) == sorted(sim.user_ids)  # every user, exactly once
    assert summary.duplicates_dropped > 0  # the drift really did repeat users...
    assert summary.repair_requests >= 1  # ...and lose some, which a re-read found


async def test_drift_report_counts_duplicates_and_repairs(tmp_path: Path) -> None:
    """The run report says how many duplicates were dropped and repair requests made."""
    async with serve(SimulatorConfig(seed=6, team_size=120, drift=3.0)) as sim:
        out = tmp_path / "s.jsonl"
        result = await run_cli(export_args(sim, out, "--concurrency", "4"))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["duplicates_dropped"] > 0
    assert report["repair_requests"] > 0
    assert report["requests"] == report["pages"] + report["retries"] + report["repair_requests"]
    grouped: dict[str, list[str]] = {}
    for record in read_jsonl(out):
        grouped.setdefault(record["_query"], []).append(record["userId"])
    assert len(grouped) == 3
    assert all(sorted(ids) == sorted(set(ids)) and len(ids) == 120 for ids in grouped.values())


async def test_without_drift_nothing_is_repaired() -> None:
    """Stable data needs no consolidation: no duplicates, no repair reads."""
    async with serve(SimulatorConfig(seed=2, team_size=95)) as sim:
        spec = spec_for(sim, page_size=10)
        sink = MemorySink()
        summary = await export(spec, sink, api_key=KEY, base_url=sim.base_url)
        expected = sim.expected_rows(spec.body(1))
    assert (summary.duplicates_dropped, summary.repair_requests) == (0, 0)
    assert_same_rows(sink.records, expected)


async def test_a_user_never_returned_fails_the_run_naming_user_and_slice(tmp_path: Path) -> None:
    """A user the API counts but never serves: exit 4, the id and slice in the report."""
    async with serve(SimulatorConfig(seed=3, team_size=40)) as sim:
        lost = sim.user_ids[7]
    config = SimulatorConfig(seed=3, team_size=40, hidden_users=frozenset({lost}))
    async with serve(config) as sim:
        out = tmp_path / "s.jsonl"
        result = await run_cli(export_args(sim, out, "--repair-rounds", "2"))
        stats = sim.stats.snapshot()
    assert result.returncode == ExitCode.INCOMPLETE, result.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["status"] == "incomplete"
    incomplete = report["incomplete_queries"]
    assert len(incomplete) == 3  # each daily slice
    assert all(q["missing_users"] == [lost] for q in incomplete)
    assert {q["window_start"][:10] for q in incomplete} == {
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
    }
    assert all(q["repair_rounds"] == 2 for q in incomplete)
    # Bounded: 3 slices x (4 pages + 2 repair reads) + the team member list.
    assert stats["requests"] == 3 * (4 + 2) + 1
    assert lost in result.stderr


async def test_changed_envelope_stops_the_next_run_showing_what_came_back(tmp_path: Path) -> None:
    """Last night's records were at payload.data; tonight's at payload.items: stop, explain."""
    out = tmp_path / "s.jsonl"
    async with serve(SimulatorConfig(seed=1, team_size=30, envelope="data")) as sim:
        first = await run_cli(export_args(sim, out))
    assert first.returncode == 0, first.stderr
    async with serve(SimulatorConfig(seed=1, team_size=30, envelope="items")) as sim:
        second = await run_cli(export_args(sim, out, "--end", "2024-01-04"))
    assert second.returncode == ExitCode.FAILED
    assert "shape changed" in second.stderr
    assert "'payload.data'" in second.stderr and "'payload.items'" in second.stderr


async def test_missing_user_id_field_stops_the_run(tmp_path: Path) -> None:
    """Records without userId cannot be keyed: the run stops and shows the fields it got."""
    async with serve(SimulatorConfig(team_size=30, drop_fields=frozenset({"userId"}))) as sim:
        out = tmp_path / "s.jsonl"
        result = await run_cli(export_args(sim, out))
    assert result.returncode == ExitCode.FAILED
    assert "no 'userId' field" in result.stderr
    assert "firstName" in result.stderr
    assert not out.exists()


async def test_new_metric_is_kept_and_logged_once(tmp_path: Path) -> None:
    """A field the API added is accepted, kept in the output, and warned about once."""
    config = SimulatorConfig(team_size=30, extra_fields=("linkedinReplied",))
    async with serve(config) as sim:
        out = tmp_path / "s.jsonl"
        result = await run_cli(export_args(sim, out, "--log-format", "json"))
    assert result.returncode == 0, result.stderr
    warnings = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if line.startswith("{") and json.loads(line)["event"] == "shape.new_fields"
    ]
    assert len(warnings) == 1
    assert warnings[0]["fields"] == ["linkedinReplied"]
    assert all("linkedinReplied" in record for record in read_jsonl(out))
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["shape"]["new_fields"] == ["linkedinReplied"]


async def test_vanished_metric_is_a_warning_in_the_report(tmp_path: Path) -> None:
    """A metric no record carries any more is reported, and the run still succeeds."""
    async with serve(SimulatorConfig(team_size=30, drop_fields=frozenset({"bounced"}))) as sim:
        out = tmp_path / "s.jsonl"
        result = await run_cli(export_args(sim, out))
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    assert report["shape"]["missing_metrics"] == {"prospect": ["bounced"]}
