"""The `fetcher` command against the simulator on a real port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from fetcher.app.cli import ExitCode, main
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from tests.integration import KEY, assert_same_rows, read_jsonl, spec_for

WRONG_KEY = "definitely-wrong-key-5f1c"


def base_args(sim: RunningSimulator, out: Path, **extra: str) -> list[str]:
    args = {
        "--base-url": sim.base_url,
        "--users": ",".join(sim.user_ids),
        "--start": "2024-01-01",
        "--end": "2024-01-31",
        "--type": "prospect",
        "--page-size": "10",
        "--out": str(out),
    }
    args.update({"--" + k.replace("_", "-"): v for k, v in extra.items()})
    return ["export", *[part for pair in args.items() for part in pair]]


async def run_cli(
    args: list[str], *, key: str | None = KEY, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m fetcher` as a real subprocess (the simulator keeps serving meanwhile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
    if key is not None:
        env["SALESHANDY_API_KEY"] = key
    result = await anyio.run_process(
        [sys.executable, "-m", "fetcher", *args], env=env, check=False, cwd=cwd
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


async def run_in_thread(
    args: list[str], monkeypatch: pytest.MonkeyPatch, key: str | None = KEY
) -> int:
    """Run main() in a worker thread (it starts its own event loop)."""
    for name in list(os.environ):
        if name.startswith(("FETCHER_", "SALESHANDY_")):
            monkeypatch.delenv(name)
    if key is not None:
        monkeypatch.setenv("SALESHANDY_API_KEY", key)
    return await anyio.to_thread.run_sync(main, args)


async def test_export_writes_every_record_and_a_report(tmp_path: Path) -> None:
    """`fetcher export` writes the full dataset, a report, and exits 0."""
    async with serve(SimulatorConfig(seed=9, team_size=123)) as sim:
        out, report = tmp_path / "stats.jsonl", tmp_path / "report.json"
        result = await run_cli([*base_args(sim, out), "--report", str(report)])
        expected = sim.expected_rows(spec_for(sim).body(1))
    assert result.returncode == ExitCode.OK, result.stderr
    assert_same_rows(read_jsonl(out), expected)
    data = json.loads(report.read_text())
    assert data["status"] == "ok"
    assert (data["pages"], data["records"], data["requests"]) == (13, 123, 13)
    assert data["duration_s"] > 0
    assert str(out) in result.stderr  # says where the output is


async def test_users_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    """--users-file reads one id per line, skipping blanks and # comments."""
    async with serve(SimulatorConfig(seed=2, team_size=30)) as sim:
        users = tmp_path / "users.txt"
        users.write_text("# the team\n\n" + "\n".join(f"{u}  # rep" for u in sim.user_ids) + "\n\n")
        out = tmp_path / "s.jsonl"
        args = base_args(sim, out)
        i = args.index("--users")
        args[i : i + 2] = ["--users-file", str(users)]
        result = await run_cli(args)
        expected = sim.expected_rows(spec_for(sim).body(1))
    assert result.returncode == 0, result.stderr
    assert_same_rows(read_jsonl(out), expected)


async def test_wrong_key_exits_3_at_once_and_never_shows_the_key(tmp_path: Path) -> None:
    """A refused key exits 3 after one request; the key is in no output, log or report."""
    async with serve(SimulatorConfig(team_size=200)) as sim:
        out, report = tmp_path / "s.jsonl", tmp_path / "r.json"
        result = await run_cli(
            [*base_args(sim, out), "--report", str(report), "--log-format", "json"], key=WRONG_KEY
        )
        requests = sim.stats.requests
    assert result.returncode == ExitCode.AUTH
    assert requests == 1
    assert "refused the key" in result.stderr
    assert json.loads(report.read_text())["status"] == "failed"
    for text in (result.stdout, result.stderr, report.read_text()):
        assert WRONG_KEY not in text
    assert not out.exists()


def _invalid_cases() -> list[Any]:
    cases = [
        ({"start": "2024-13-01"}, "start"),
        ({"end": "yesterday-ish"}, "end"),
        ({"start": "2024-02-01", "end": "2024-01-01"}, "after end"),
        ({"type": "calls"}, "--type"),
        ({"count_by": "total"}, "--count-by"),
        ({"order_by": "emailSent"}, "not a prospect metric"),
        ({"sort_order": "sideways"}, "--sort-order"),
        ({"page_size": "0"}, "--page-size"),
        ({"page_size": "5000"}, "--page-size"),
        ({"concurrency": "0"}, "--concurrency"),
        ({"users": ","}, "users"),
        ({"users": "a,b,a"}, "more than once"),
        ({"timezone": "Mars/Olympus"}, "--timezone"),
        ({"rate_limit": "lots"}, "--rate-limit"),
        ({"base_url": "ftp://x"}, "--base-url"),
        ({"out": "stats.xlsx"}, "--out"),
        ({"page_size": "ten"}, "--page-size"),
    ]
    return [
        pytest.param(extra, fragment, id=f"{next(iter(extra))}={next(iter(extra.values()))}")
        for extra, fragment in cases
    ]


@pytest.mark.parametrize(("extra", "fragment"), _invalid_cases())
async def test_invalid_input_exits_2_naming_the_field_and_sends_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: dict[str, str],
    fragment: str,
) -> None:
    """Each invalid option exits 2 with a message naming it, before any request."""
    async with serve(SimulatorConfig(team_size=20)) as sim:
        extra = dict(extra)
        out = tmp_path / extra.pop("out", "s.jsonl")
        code = await run_in_thread(base_args(sim, out, **extra), monkeypatch)
        requests = sim.stats.requests
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE, err
    assert fragment in err
    assert requests == 0


async def test_missing_key_exits_2_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without SALESHANDY_API_KEY or a key file: exit 2, saying how to provide one."""
    async with serve(SimulatorConfig(team_size=20)) as sim:
        code = await run_in_thread(base_args(sim, tmp_path / "s.jsonl"), monkeypatch, key=None)
        requests = sim.stats.requests
    assert code == ExitCode.USAGE
    assert "SALESHANDY_API_KEY" in capsys.readouterr().err
    assert requests == 0


@pytest.mark.parametrize("missing", ["--start", "--end", "--out", "--users"])
async def test_missing_required_option_exits_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    missing: str,
) -> None:
    """Leaving out a required option names it."""
    async with serve(SimulatorConfig(team_size=20)) as sim:
        args = base_args(sim, tmp_path / "s.jsonl")
        i = args.index(missing)
        del args[i : i + 2]
        code = await run_in_thread(args, monkeypatch)
        requests = sim.stats.requests
    assert code == ExitCode.USAGE
    assert missing.lstrip("-") in capsys.readouterr().err
    assert requests == 0


async def test_unknown_flag_and_bad_int_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Argparse errors (unknown flag) also exit 2."""
    async with serve(SimulatorConfig(team_size=5)) as sim:
        code = await run_in_thread(
            [*base_args(sim, tmp_path / "s.jsonl"), "--colour", "red"], monkeypatch
        )
        requests = sim.stats.requests
    assert code == ExitCode.USAGE
    assert requests == 0


async def test_api_key_file(tmp_path: Path) -> None:
    """--api-key-file supplies the key when the variable is not set."""
    async with serve(SimulatorConfig(team_size=12)) as sim:
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "\n")
        key_file.chmod(0o600)
        result = await run_cli(
            [*base_args(sim, tmp_path / "s.jsonl"), "--api-key-file", str(key_file)], key=None
        )
    assert result.returncode == 0, result.stderr


async def test_incomplete_run_exits_4_lists_missing_pages_and_keeps_partial(tmp_path: Path) -> None:
    """A page that never succeeds: exit 4, the report lists it, the written pages are kept."""
    async with serve(SimulatorConfig(team_size=60, fail_pages=frozenset({2}))) as sim:
        out, report = tmp_path / "s.jsonl", tmp_path / "r.json"
        result = await run_cli(
            [*base_args(sim, out), "--report", str(report), "--max-attempts", "2"]
        )
    assert result.returncode == ExitCode.INCOMPLETE, result.stderr
    data = json.loads(report.read_text())
    assert data["status"] == "incomplete"
    assert [f["page"] for f in data["failed_pages"]] == [2]
    assert "missing page 2" in result.stderr
    assert not out.exists()
    assert len(read_jsonl(tmp_path / "s.jsonl.partial")) == 50


@pytest.mark.parametrize(
    ("envelope", "string_counts", "team_size", "page_size"),
    [
        ("data", False, 123, 10),
        ("items", True, 100, 10),  # the page size divides the total exactly
        ("array", False, 101, 10),  # no meta: stops at the short page
        ("nested", True, 40, 50),  # one page
        ("named", False, 1200, 4),  # hundreds of pages
        ("array", True, 60, 20),  # no meta, exact division: ends at the empty page
    ],
)
async def test_cli_export_for_each_envelope(
    tmp_path: Path, envelope: Any, string_counts: bool, team_size: int, page_size: int
) -> None:
    """The CLI exports the full dataset whatever the envelope, counts as integers."""
    config = SimulatorConfig(
        seed=4, team_size=team_size, envelope=envelope, string_counts=string_counts
    )
    async with serve(config) as sim:
        out = tmp_path / "s.jsonl"
        result = await run_cli(base_args(sim, out, page_size=str(page_size)))
        expected = sim.expected_rows(spec_for(sim).body(1))
        twice = sim.stats.pages_fetched_twice()
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    assert_same_rows(records, expected)
    assert all(isinstance(r["prospectAdded"], int) for r in records)
    assert twice == []


async def test_cli_empty_result(tmp_path: Path) -> None:
    """No matching users: exit 0, an empty file, one request."""
    async with serve(SimulatorConfig(team_size=10)) as sim:
        out = tmp_path / "s.jsonl"
        result = await run_cli(base_args(sim, out, users="ghost000001"))
        requests = sim.stats.requests
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b""
    assert requests == 1
