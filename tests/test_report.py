"""The run report is a checked file: what an export writes loads back; an edited one does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fetcher.app.cli import ExitCode
from fetcher.app.report import RunReport
from fetcher.errors import ConfigError
from fetcher.run.pool import FailedPage, IncompleteQuery, QueryResult, RunSummary
from fetcher.simulator import SimulatorConfig, serve
from tests.test_cli import base_args, run_cli


async def test_an_exports_report_loads_back_with_the_job_details(tmp_path: Path) -> None:
    """`--report` writes a file that RunReport.load reads: the run's counts and its window."""
    async with serve(SimulatorConfig(seed=3, team_size=25)) as sim:
        out, path = tmp_path / "s.jsonl", tmp_path / "report.json"
        result = await run_cli([*base_args(sim, out), "--report", str(path)])
    assert result.returncode == ExitCode.OK, result.stderr
    report = RunReport.load(path)
    assert (report.status, report.pages, report.records) == ("ok", 3, 25)
    assert report.output == str(out)
    assert report.window is not None and report.window[0].startswith("2024-01-01")
    assert [q.records for q in report.query_results] == [25]


def test_every_field_of_the_summary_is_in_the_schema() -> None:
    """A field added to RunSummary.to_dict without the schema fails here, not in a user's run."""
    summary = RunSummary(
        status="incomplete",
        failed_pages=[FailedPage("q", 2, "boom", "ServerError", 503, 6)],
        incomplete_queries=[IncompleteQuery("q", "prospect", "a", "b", 3, 2, ["u3"], 1)],
        query_results=[QueryResult("q", "prospect", "a", "b", 3, 1, 3, 1, 2, [2])],
    )
    report = RunReport.of(summary, output="out.jsonl")
    assert report.model_dump(mode="json", exclude_none=False).keys() >= summary.to_dict().keys()
    assert report.failed_pages[0].status == 503
    assert report.incomplete_queries[0].missing_users == ["u3"]
    with pytest.raises(ValueError, match="unknown_detail"):
        RunReport.of(summary, unknown_detail=1)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"pages": "many"}, "pages"),
        ({"status": "fine"}, "status"),
        ({"extra_field": 1}, "extra_field"),
    ],
    ids=["wrong-type", "unknown-status", "unknown-field"],
)
def test_a_hand_edited_report_is_refused_naming_the_field(
    tmp_path: Path, edit: dict[str, object], field: str
) -> None:
    """A torn or edited report fails with the field that is wrong and what to do."""
    path = tmp_path / "report.json"
    RunReport.of(RunSummary()).write(path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **edit}))
    with pytest.raises(ConfigError, match=field) as caught:
        RunReport.load(path)
    assert "--report" in str(caught.value)


def test_a_report_that_is_not_json_is_refused(tmp_path: Path) -> None:
    """Half a file (a copy cut short) is refused too, not read as an empty run."""
    path = tmp_path / "report.json"
    RunReport.of(RunSummary()).write(path)
    path.write_text(path.read_text()[:40])
    with pytest.raises(ConfigError, match="not one fetcher wrote"):
        RunReport.load(path)
