"""Errors people can act on: one line saying what, where and what to do; tracebacks on --debug."""

from __future__ import annotations

from pathlib import Path

import pytest

import fetcher.app.cli
from fetcher.app.cli import ExitCode, actionable
from fetcher.errors import (
    AuthError,
    ConnectionLostError,
    FetcherError,
    PageRef,
    RequestTimeoutError,
    ServerError,
    SinkError,
)
from fetcher.simulator import SimulatorConfig, serve
from tests.test_cli import base_args, run_cli, run_in_thread

SECRET = "sk-secret-0123456789"
REF = PageRef("prospect:2024-01-01..2024-01-31:abc", 3)


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (ServerError("server error (HTTP 503)", status=503, page=REF), "run the same command"),
        (RequestTimeoutError("no response within the timeout", page=REF), "--timeout"),
        (ConnectionLostError("connection lost mid-response", page=REF), "run the same command"),
        (SinkError("cannot write out.jsonl: No space left on device"), "free space"),
    ],
    ids=["server", "timeout", "connection-lost", "sink"],
)
def test_errors_without_advice_get_what_to_do(error: Exception, hint: str) -> None:
    """An error whose message does not say what to do gets the advice for its kind."""
    assert isinstance(error, fetcher.errors.FetcherError)
    line = actionable(error)
    assert line.startswith(str(error))  # what happened, and to which page
    assert hint in line


def test_errors_that_already_advise_are_left_alone() -> None:
    """A message that already names a flag or a step is printed as it is."""
    error = AuthError("the API refused the key; check SALESHANDY_API_KEY", status=400, page=REF)
    assert actionable(error) == str(error)
    assert "page 3 of query prospect:2024-01-01..2024-01-31:abc" in actionable(error)


async def test_unwritable_output_says_which_file_and_what_to_do(tmp_path: Path) -> None:
    """An output that cannot be created stops the run with the path and a fix, exit 5."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    async with serve(SimulatorConfig(team_size=10)) as sim:
        out = blocker / "s.jsonl"
        result = await run_cli([*base_args(sim, out), "--state", str(tmp_path / "state.json")])
        requests = sim.stats.requests
    assert result.returncode == ExitCode.FAILED
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("fetcher: error:"))
    assert str(blocker / "s.jsonl") in line
    assert "check that the output can be written" in line
    assert "Traceback" not in result.stderr
    assert requests == 0  # the sink opens before the first request


async def test_a_bad_window_with_all_users_fails_before_the_team_list_is_fetched(
    tmp_path: Path,
) -> None:
    """--all-users needs a request for the team; a bad window is found before that one."""
    async with serve(SimulatorConfig(team_size=10)) as sim:
        result = await run_cli([
            "export", "--base-url", sim.base_url, "--all-users",
            "--start", "2024-02-01", "--end", "2024-01-01", "--out", str(tmp_path / "s.jsonl"),
        ])  # fmt: skip
        requests = sim.stats.requests
    assert result.returncode == ExitCode.USAGE
    assert "start" in result.stderr
    assert requests == 0


async def test_unwritable_report_is_named_with_a_fix(tmp_path: Path) -> None:
    """A report path that cannot be written is named, with what to check, exit 5."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    async with serve(SimulatorConfig(team_size=10)) as sim:
        result = await run_cli(
            [*base_args(sim, tmp_path / "s.jsonl"), "--report", str(blocker / "r.json")]
        )
    assert result.returncode == ExitCode.FAILED
    assert f"cannot use {blocker}" in result.stderr
    assert "check the path and its permissions" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
async def test_traceback_only_with_debug_and_never_with_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    debug: bool,
) -> None:
    """--debug prints the traceback with the API key redacted; without it, one line."""

    async def broken(*args: object, **kwargs: object) -> ExitCode:
        raise RuntimeError(f"a bug that mentions the key {SECRET}")

    monkeypatch.setattr(fetcher.app.cli, "run_export", broken)
    async with serve(SimulatorConfig(team_size=5)) as sim:
        args = base_args(sim, tmp_path / "s.jsonl") + (["--debug"] if debug else [])
        code = await run_in_thread(args, monkeypatch, key=SECRET)
    err = capsys.readouterr().err
    assert code == ExitCode.INTERNAL
    assert SECRET not in err
    assert "a bug that mentions the key ***" in err
    assert ("Traceback (most recent call last)" in err) is debug
    assert ("run with --debug" in err) is not debug


@pytest.mark.parametrize(
    "error",
    [
        AuthError("the API refused the request (HTTP 401)", status=401, page=REF),
        RequestTimeoutError("no response within the timeout", page=REF),
    ],
    ids=["bad-key", "timeout"],
)
def test_check_and_an_export_give_the_same_advice(error: FetcherError) -> None:
    """One table of advice: `fetcher check` and an export's error line say the same fix."""
    from fetcher.app.advice import what_to_do  # noqa: PLC0415
    from fetcher.app.check import classify  # noqa: PLC0415

    checked = classify(error, base_url="https://open-api.saleshandy.com", timeout=30)
    line = actionable(error)
    fix = what_to_do(error, situation="check")
    assert fix
    assert fix in checked.message
    assert fix in line  # the export's line adds "then run the same command again" to it
    assert "run the same command again" not in checked.message
