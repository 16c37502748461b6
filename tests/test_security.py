"""Issue 9: the key stays secret, it goes only where it should, and hostile answers are bounded."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
import trustme
from aiohttp import web

from fetcher import Client, MemorySink, QuerySpec, RetryPolicy, export
from fetcher.app.cli import ExitCode
from fetcher.app.settings import load_settings, resolve_api_key
from fetcher.errors import ConfigError, RateLimitedError, TLSError
from fetcher.http.limiter import Limiter
from fetcher.simulator import SimulatorConfig, serve
from tests.hostile import hostile_server
from tests.integration import JAN_END, JAN_START

SECRET = "sk_live_5f3b9c1e7a2d4f60b8e1c9d2"


_MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(r.returncode)"
)


async def fetcher_cli(
    args: list[str],
    *,
    key: str | None = SECRET,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    rss_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a subprocess with a clean environment plus `env`.

    With ``rss_file``, the CLI's peak resident memory (KiB) is written there.
    """
    full = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
    if key is not None:
        full["SALESHANDY_API_KEY"] = key
    full.update(env or {})
    command = [sys.executable, "-m", "fetcher", *args]
    if rss_file is not None:
        command = [sys.executable, "-c", _MEASURE, str(rss_file), *command]
    result = await anyio.run_process(command, env=full, check=False, cwd=cwd)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def export_args(base_url: str, tmp: Path, *extra: str) -> list[str]:
    return [
        "export", "--base-url", base_url, "--users", "u1,u2",
        "--start", "2024-01-01", "--end", "2024-01-02",
        "--out", str(tmp / "out.jsonl"), "--report", str(tmp / "report.json"),
        *extra,
    ]  # fmt: skip


def assert_no_secret_anywhere(texts: list[str], root: Path, secret: str = SECRET) -> None:
    """The key is in none of the texts and in no file under root (outputs, report, state, logs)."""
    for text in texts:
        assert secret not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


SPEC = QuerySpec(user_ids=("u1", "u2"), start=JAN_START, end=JAN_END, type="prospect")


# -- where the key may go --------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "allowed"),
    [
        ("https://open-api.saleshandy.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://open-api.saleshandy.com", False),
        ("http://10.0.0.5", False),
    ],
)
def test_plain_http_is_refused_except_to_loopback(base_url: str, allowed: bool) -> None:
    """The key may cross the network only over HTTPS; loopback (the simulator) is fine."""
    if allowed:
        assert load_settings({"base_url": base_url}).base_url == base_url
    else:
        with pytest.raises(ConfigError, match="--allow-insecure-http"):
            load_settings({"base_url": base_url})
        assert load_settings({"base_url": base_url, "allow_insecure_http": True})


async def test_plain_http_to_a_remote_host_exits_2_before_any_request(tmp_path: Path) -> None:
    """The CLI refuses an http:// base URL for another host, naming the override."""
    result = await fetcher_cli(export_args("http://api.example.com", tmp_path))
    assert result.returncode == ExitCode.USAGE
    assert "--allow-insecure-http" in result.stderr
    assert "Traceback" not in result.stderr


async def test_tls_is_verified_and_a_ca_bundle_can_be_trusted(tmp_path: Path) -> None:
    """A self-signed server is refused by default and accepted with its CA bundle."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    async def page(request: web.Request) -> web.Response:
        return web.json_response(
            {"payload": {"data": [{"userId": "u1"}], "meta": {"totalPages": 1, "totalItems": 1}}}
        )

    app = web.Application()
    app.router.add_post("/v1/analytics/team/stats", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with pytest.raises(TLSError, match="TLS"):
            await export(
                SPEC, MemorySink(), api_key=SECRET, base_url=url, retry=RetryPolicy(attempts=1)
            )
        summary = await export(SPEC, MemorySink(), api_key=SECRET, base_url=url, ca_bundle=bundle)
        assert summary.ok
    finally:
        await runner.cleanup()


async def test_redirects_are_not_followed(tmp_path: Path) -> None:
    """A redirect to another host is reported; the key is not replayed to it."""
    async with hostile_server("redirect") as server:
        result = await fetcher_cli(export_args(server.base_url, tmp_path))
    assert result.returncode != 0
    assert "does not follow redirects" in result.stderr
    assert server.requests == 1


# -- where the key comes from ----------------------------------------------------------


def test_key_file_readable_by_others_gets_a_warning(tmp_path: Path) -> None:
    """Like ssh, a key file others can read is warned about (and still used)."""
    key_file = tmp_path / "key"
    key_file.write_text(SECRET)
    key_file.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        key = resolve_api_key(load_settings({"api_key_file": key_file}))
    assert key.get_secret_value() == SECRET
    warnings = [e for e in logs if e["event"] == "key_file.unprotected"]
    assert warnings and warnings[0]["mode"] == "0o644"
    assert SECRET not in repr(logs)
    key_file.chmod(0o600)
    with structlog.testing.capture_logs() as logs:
        resolve_api_key(load_settings({"api_key_file": key_file}))
    assert not [e for e in logs if e["event"] == "key_file.unprotected"]


@pytest.mark.parametrize("command", ["export", "plan", "check"])
async def test_a_key_file_is_read_and_warned_about_once_per_command(
    tmp_path: Path, command: str
) -> None:
    """The CLI reads the key file once and hands that key on: one warning, not one per layer."""
    key_file = tmp_path / "key"
    key_file.write_text(SECRET)
    key_file.chmod(0o644)
    query = ["--base-url", "simulator", "--api-key-file", str(key_file), "--users", "u1"]
    if command != "check":
        query += ["--start", "2024-01-01", "--end", "2024-01-01"]
    if command == "export":
        query += ["--out", str(tmp_path / "o.jsonl")]
    result = await fetcher_cli([command, *query], key=None)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("key_file.unprotected") == 1
    assert SECRET not in result.stderr + result.stdout


async def test_key_in_config_is_refused(tmp_path: Path) -> None:
    """A key pasted into the TOML is refused, pointing at the env or a key file."""
    config = tmp_path / "c.toml"
    config.write_text(f'api_key = "{SECRET}"\n')
    result = await fetcher_cli(["export", "--config", str(config)])
    assert result.returncode == ExitCode.USAGE
    assert "SALESHANDY_API_KEY" in result.stderr and "api_key_file" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_secret_types_hide_the_key() -> None:
    """The key is held as a secret: repr and str of the client and settings hide it."""
    client = Client(api_key=SECRET)
    assert SECRET not in repr(client) and SECRET not in str(vars(client).get("_api_key"))


# -- the key in every artefact -----------------------------------------------------------


async def test_success_run_never_writes_the_key(tmp_path: Path) -> None:
    """A successful run: stdout, stderr (JSON logs at debug), report, state, output: no key."""
    config = SimulatorConfig(team_size=30, api_keys=(SECRET,), fault_rate=0.2, seed=3)
    async with serve(config) as sim:
        args = [
            "export",
            "--base-url",
            sim.base_url,
            "--all-users",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-03",
            "--slice",
            "day",
            "--page-size",
            "5",
            "--out",
            str(tmp_path / "o.jsonl"),
            "--report",
            str(tmp_path / "r.json"),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--max-attempts",
            "10",
        ]
        result = await fetcher_cli(args)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.jsonl.state.json").exists()
    assert_no_secret_anywhere([result.stdout, result.stderr], tmp_path)


async def test_auth_failure_never_shows_the_key(tmp_path: Path) -> None:
    """A refused key: the message, logs and report do not contain it."""
    async with serve(SimulatorConfig(team_size=5)) as sim:
        result = await fetcher_cli(export_args(sim.base_url, tmp_path, "--log-format", "json"))
    assert result.returncode == ExitCode.AUTH
    assert_no_secret_anywhere([result.stdout, result.stderr], tmp_path)


async def test_server_echoing_the_key_is_scrubbed_even_under_debug(tmp_path: Path) -> None:
    """A server that quotes the key back in its error: not in messages, logs or tracebacks."""
    async with hostile_server("echo_key") as server:
        result = await fetcher_cli(
            export_args(server.base_url, tmp_path, "--debug", "--log-format", "json")
        )
    assert server.keys_seen == [SECRET]
    assert result.returncode != 0
    assert_no_secret_anywhere([result.stdout, result.stderr], tmp_path)


async def test_crash_under_debug_does_not_print_the_key(tmp_path: Path) -> None:
    """An unwritable output under --debug shows a traceback, with no key in it."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    async with serve(SimulatorConfig(team_size=5, api_keys=(SECRET,))) as sim:
        args = export_args(sim.base_url, tmp_path, "--debug")
        args[args.index("--out") + 1] = str(blocker / "out.jsonl")
        result = await fetcher_cli(args)
    assert result.returncode != 0
    assert_no_secret_anywhere([result.stdout, result.stderr], tmp_path)


# -- hostile responses -------------------------------------------------------------------


async def _hostile_run(
    kind: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[Any, subprocess.CompletedProcess[str]]:
    rss = tmp_path / "rss"
    async with hostile_server(kind) as server:
        with anyio.fail_after(60):  # bounded time
            result = await fetcher_cli(
                export_args(server.base_url, tmp_path, "--max-attempts", "2", *extra),
                env=env,
                rss_file=rss,
            )
    assert "Traceback" not in result.stderr  # a clear error, not a crash
    assert result.returncode != 0
    peak_mib = int(rss.read_text()) / 1024
    assert peak_mib < 250, f"peak memory {peak_mib:.0f} MiB"  # bounded memory
    return server, result


async def test_unbounded_body_is_cut_off_at_the_cap(tmp_path: Path) -> None:
    """A body that never ends is refused at max_body_bytes, not buffered."""
    server, result = await _hostile_run("huge", tmp_path, env={"FETCHER_MAX_BODY_BYTES": "1048576"})
    assert "exceeds the 1,048,576-byte cap" in result.stderr
    assert server.requests == 1  # not retried


async def test_declared_oversize_body_is_refused(tmp_path: Path) -> None:
    """A content-length over the cap is refused before reading."""
    _, result = await _hostile_run(
        "huge_declared", tmp_path, env={"FETCHER_MAX_BODY_BYTES": "1048576"}
    )
    assert "cap" in result.stderr


async def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    """JSON nested 200,000 deep is refused with a clear message."""
    server, result = await _hostile_run("nested", tmp_path)
    assert "not valid JSON (depth limit exceeded" in result.stderr
    assert server.requests == 2  # bounded by --max-attempts


async def test_non_utf8_body_is_refused(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are refused as invalid JSON."""
    _, result = await _hostile_run("non_utf8", tmp_path)
    assert "not valid UTF-8" in result.stderr


async def test_retry_after_of_years_gives_up_at_once(tmp_path: Path) -> None:
    """Retry-After: ten years is not waited for: the page gives up with a clear error."""
    server, result = await _hostile_run("retry_after_years", tmp_path, "--max-attempts", "6")
    assert "asked to wait 315,360,000 s" in result.stderr
    assert server.requests == 1


async def test_negative_retry_after_neither_hangs_nor_hot_loops(tmp_path: Path) -> None:
    """Retry-After: -30 falls back to backoff; the run then succeeds."""
    async with hostile_server("retry_after_negative") as server:
        with anyio.fail_after(30):
            result = await fetcher_cli(export_args(server.base_url, tmp_path))
    assert result.returncode == 0, result.stderr
    assert server.requests == 2


async def test_a_billion_pages_is_refused(tmp_path: Path) -> None:
    """A totalPages of 10^9 is refused after one request, not paged through."""
    server, result = await _hostile_run("total_pages", tmp_path)
    assert "1,000,000,000 pages" in result.stderr
    assert server.requests == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "incomplete"


async def test_megabyte_string_field_is_refused(tmp_path: Path) -> None:
    """A record with a 1 MB string is refused with the field named."""
    _, result = await _hostile_run("big_string", tmp_path)
    assert "firstName" in result.stderr and "1,048,576 characters" in result.stderr


def test_limiter_pause_is_capped() -> None:
    """Even a refusal asking for years pauses the workers for at most max_pause_s."""
    limiter = Limiter(max_pause_s=5.0)
    limiter.refused(10.0**9)
    until = limiter.waiting_until
    assert until is not None and until - time.monotonic() <= 5.1


async def test_rate_limited_error_says_why_it_gave_up() -> None:
    """The library raises the refusal with the reason it did not wait."""
    async with (
        hostile_server("retry_after_years") as server,
        Client(api_key=SECRET, base_url=server.base_url) as client,
    ):
        with pytest.raises(RateLimitedError, match="max_retry_after_s"):
            await client.fetch_page(SPEC, 1)


# -- files ---------------------------------------------------------------------------------


async def test_files_respect_the_umask_and_state_is_private(tmp_path: Path) -> None:
    """Output and report follow the umask (027 -> 0640); the state file is 0600."""
    async with serve(SimulatorConfig(team_size=10, api_keys=(SECRET,))) as sim:
        args = export_args(sim.base_url, tmp_path)
        code = (
            "import os, sys; os.umask(0o027); "
            f"sys.argv = ['fetcher', *{args!r}]; "
            "from fetcher.app.cli import main; sys.exit(main())"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
        env["SALESHANDY_API_KEY"] = SECRET
        result = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    names = ("out.jsonl", "report.json", "out.jsonl.state.json")
    modes = {name: oct(os.stat(tmp_path / name).st_mode & 0o777) for name in names}
    assert modes == {"out.jsonl": "0o640", "report.json": "0o640", "out.jsonl.state.json": "0o600"}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # noqa: ASYNC240
    assert leftovers == []  # no temporary files left behind
