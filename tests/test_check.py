"""`fetcher check`: one request, and a plain message for each way it can go wrong."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from fetcher.app.cli import ExitCode, build_parser
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from tests.test_cli import WRONG_KEY, run_cli


def check_args(base_url: str, *extra: str) -> list[str]:
    return ["check", "--base-url", base_url, *extra]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def one_user(sim: RunningSimulator) -> list[str]:
    return ["--users", sim.user_ids[0]]


async def test_bad_key_wrong_port_and_good_key_get_three_different_correct_messages() -> None:
    """A refused key, a closed port and a good key: three exit codes, three plain messages."""
    async with serve(SimulatorConfig(team_size=5)) as sim:
        bad = await run_cli(check_args(sim.base_url, *one_user(sim)), key=WRONG_KEY)
        bad_requests = sim.stats.requests
        port = closed_port()
        unreachable = await run_cli(check_args(f"http://127.0.0.1:{port}", *one_user(sim)))
        good = await run_cli(check_args(sim.base_url, *one_user(sim)))
        good_requests = sim.stats.requests - bad_requests

    assert bad.returncode == ExitCode.AUTH
    assert "bad key" in bad.stderr and "refused the API key" in bad.stderr
    assert "SALESHANDY_API_KEY" in bad.stderr
    assert WRONG_KEY not in bad.stderr + bad.stdout

    assert unreachable.returncode == ExitCode.FAILED
    assert f"cannot connect to 127.0.0.1:{port} (Connection refused)" in unreachable.stderr
    assert "wrong host or port" in unreachable.stderr and "--base-url" in unreachable.stderr

    assert good.returncode == ExitCode.OK, good.stderr
    assert "OK" in good.stdout and "the key works" in good.stdout
    assert sim.base_url in good.stdout

    messages = {bad.stderr.strip(), unreachable.stderr.strip(), good.stdout.strip()}
    assert len(messages) == 3
    assert (bad_requests, good_requests) == (1, 1)  # one request each, never retried


async def test_check_reports_the_rate_limit_headers() -> None:
    """A good check shows the server's rate limit, what is left and when it resets."""
    async with serve(SimulatorConfig(team_size=5, rate_limit=30, rate_window_s=60)) as sim:
        result = await run_cli(check_args(sim.base_url))  # no users: the team member list
    assert result.returncode == ExitCode.OK, result.stderr
    assert "team member list (5 members)" in result.stdout
    assert "rate limit 30 requests per window, 29 left" in result.stdout


async def test_rate_limited_right_now_says_when_to_retry() -> None:
    """Over the limit, check says so and when to retry, after a single request."""
    async with serve(SimulatorConfig(team_size=5, rate_limit=1, rate_window_s=60)) as sim:
        first = await run_cli(check_args(sim.base_url, *one_user(sim)))
        second = await run_cli(check_args(sim.base_url, *one_user(sim)))
        requests = sim.stats.requests
    assert first.returncode == ExitCode.OK, first.stderr
    assert second.returncode == ExitCode.FAILED
    assert "rate-limited right now" in second.stderr
    match = re.search(r"retry after (\d+) s", second.stderr)
    assert match is not None, second.stderr
    assert 0 < int(match.group(1)) <= 60
    assert requests == 2  # the refusal was not retried


async def test_https_to_a_plain_http_port_is_a_tls_message() -> None:
    """https:// against a plain-HTTP server is named as a TLS problem, with the fix."""
    async with serve(SimulatorConfig(team_size=5)) as sim:
        https = sim.base_url.replace("http://", "https://")
        result = await run_cli(check_args(https, *one_user(sim)))
    assert result.returncode == ExitCode.FAILED
    assert "TLS failed with 127.0.0.1:" in result.stderr
    assert "does not speak TLS; use http://" in result.stderr


async def test_no_key_is_a_usage_error_and_sends_nothing(tmp_path: Path) -> None:
    """Without a key, check exits 2 naming the variable, before any request."""
    async with serve(SimulatorConfig(team_size=5)) as sim:
        result = await run_cli(check_args(sim.base_url), key=None, cwd=tmp_path)
        requests = sim.stats.requests
    assert result.returncode == ExitCode.USAGE
    assert "SALESHANDY_API_KEY" in result.stderr
    assert requests == 0


async def test_check_runs_against_the_built_in_simulator() -> None:
    """base_url = "simulator" starts the simulator, so the example config checks out."""
    result = await run_cli(check_args("simulator"), key=None)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "the key works" in result.stdout


def test_check_and_plan_are_commands_with_their_own_help() -> None:
    """`fetcher check` and `fetcher plan` are listed and take the export options."""
    parser = build_parser()
    assert "check" in parser.format_help() and "plan" in parser.format_help()
    args = parser.parse_args(["check", "--config", "x.toml", "--users", "a", "--timeout", "3"])
    assert (args.command, args.users, args.timeout) == ("check", "a", 3.0)
