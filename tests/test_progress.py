"""The live progress display: its arithmetic on fake snapshots, and the CLI on a real terminal."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from fetcher.app.progress import (
    ProgressDisplay,
    RateMeter,
    estimate_eta,
    estimate_total_pages,
    format_duration,
    render,
    wants_progress,
)
from fetcher.run.pool import QueryView, RunSnapshot
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from tests.integration import KEY
from tests.test_cli import run_cli

# Cursor moves, colours, hide/show cursor: what a live display writes besides text.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
PAGES = re.compile(r"pages \d+/\d+")
NOW = 1_700_000_000.0


def snapshot(**changes: Any) -> RunSnapshot:
    base = RunSnapshot(
        elapsed_s=10.0,
        queries_total=4,
        queries_finished=1,
        queries_unsized=0,
        pages_done=12,
        pages_total=40,
        records=600,
        requests=12,
        retries=0,
        failed_pages=0,
        waiting_until=None,
        interval_s=0.0,
        resumed_pages=0,
        active=(),
    )
    return replace(base, **changes)


def view(done: int, total: int | None) -> QueryView:
    day = dt.datetime(2024, 6, 3, tzinfo=dt.UTC)
    return QueryView(
        key="prospect:2024-06-03..2024-06-03:abc",
        type="prospect",
        window_start=day,
        window_end=day + dt.timedelta(hours=23, minutes=59, seconds=59),
        pages_done=done,
        pages_total=total,
        failed_pages=0,
    )


def text_of(renderable: Any, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


# -- arithmetic ---------------------------------------------------------------


def test_rate_meter_reports_rates_over_its_window() -> None:
    """Pages and requests per second are measured over the recent window only."""
    meter = RateMeter(window_s=10.0)
    assert meter.pages_per_s is None
    meter.add(0.0, pages=0, requests=0)
    meter.add(5.0, pages=100, requests=110)  # a fast start...
    meter.add(15.0, pages=110, requests=120)
    meter.add(25.0, pages=120, requests=130)  # ...then 1 page/s
    assert meter.pages_per_s == pytest.approx(1.0)
    assert meter.requests_per_s == pytest.approx(1.0)


def test_total_pages_extrapolates_unsized_queries_from_sized_ones() -> None:
    """Queries whose page 1 is not back yet count as the average sized query."""
    assert estimate_total_pages(snapshot()) == 40
    assert estimate_total_pages(snapshot(queries_unsized=2, pages_total=20)) == 40
    assert estimate_total_pages(snapshot(queries_unsized=4, pages_total=0)) is None


def test_eta_is_remaining_pages_over_recent_throughput() -> None:
    """Without a rate limit the ETA is the remaining pages at the recent rate."""
    assert estimate_eta(snapshot(), pages_per_s=4.0, now=NOW) == pytest.approx(28 / 4)


def test_eta_respects_the_rate_limit_pace_and_the_current_wait() -> None:
    """A slow limiter pace and a pause under way lengthen the ETA past the throughput."""
    paced = snapshot(interval_s=0.5)  # 2 requests/s
    assert estimate_eta(paced, pages_per_s=10.0, now=NOW) == pytest.approx(28 * 0.5)
    waiting = snapshot(interval_s=0.5, waiting_until=NOW + 3.0)
    assert estimate_eta(waiting, pages_per_s=10.0, now=NOW) == pytest.approx(3.0 + 14.0)


def test_eta_counts_retries_in_the_remaining_requests() -> None:
    """Requests per page so far (retries included) scale the remaining requests."""
    retrying = snapshot(requests=18, interval_s=1.0)  # 1.5 requests per page
    assert estimate_eta(retrying, pages_per_s=None, now=NOW) == pytest.approx(28 * 1.5)


def test_eta_is_unknown_without_anything_to_go_on_and_zero_when_done() -> None:
    """No throughput and no pace: no ETA; every page settled: zero."""
    assert estimate_eta(snapshot(), pages_per_s=None, now=NOW) is None
    assert estimate_eta(snapshot(pages_done=38, failed_pages=2), pages_per_s=None, now=NOW) == 0
    assert format_duration(None) == "-"
    assert format_duration(65.2) == "0:01:06"


# -- the frame ----------------------------------------------------------------


def test_frame_shows_pages_of_total_rates_retries_and_slices() -> None:
    """The overall line says pages done of the total; each active slice has a row."""
    frame = render(
        snapshot(retries=3, records=1234, active=(view(3, 10), view(0, None))),
        pages_per_s=2.0,
        requests_per_s=2.5,
        now=NOW,
    )
    text = text_of(frame)
    assert "pages 12/40" in text
    assert "records 1,234" in text
    assert "2.5 req/s" in text
    assert "retries 3" in text
    assert "ETA 0:00:14" in text
    assert "prospect  2024-06-03" in text
    assert "pages 3/10" in text
    assert "pages 0/?" in text


def test_frame_says_until_when_it_waits_for_the_rate_limit_in_local_time() -> None:
    """A rate-limit pause shows as 'waiting for the rate limit until HH:MM:SS', local time."""
    until = NOW + 2.0
    text = text_of(
        render(snapshot(waiting_until=until), pages_per_s=None, requests_per_s=None, now=NOW)
    )
    local = dt.datetime.fromtimestamp(until, tz=dt.UTC).astimezone().strftime("%H:%M:%S")
    assert f"waiting for the rate limit until {local}" in text
    assert "waiting" not in text_of(
        render(snapshot(waiting_until=NOW - 1), pages_per_s=None, requests_per_s=None, now=NOW)
    )


def test_frame_marks_queries_not_sized_yet() -> None:
    """While some queries' page 1 is out, the total says how many are not counted."""
    text = text_of(
        render(snapshot(queries_unsized=2), pages_per_s=None, requests_per_s=None, now=NOW)
    )
    assert "pages 12/40 (+2 queries not sized yet)" in text


@pytest.mark.parametrize("width", [30, 60, 100])
def test_frame_lines_never_exceed_the_terminal_width(width: int) -> None:
    """Frame lines crop rather than wrap, so the in-place redraw never loses count."""
    busy = snapshot(
        queries_unsized=3,
        records=10**9,
        retries=12345,
        waiting_until=NOW + 5,
        active=(view(3, 10), view(0, None)) * 6,
    )
    console = Console(file=io.StringIO(), width=width, soft_wrap=True, color_system=None)
    console.print(render(busy, pages_per_s=2.0, requests_per_s=123.4, now=NOW))
    file = console.file
    assert isinstance(file, io.StringIO)
    assert max(len(line) for line in file.getvalue().splitlines()) <= width


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "quiet", "log_format", "shown"),
    [
        (True, False, "console", True),
        (False, False, "console", False),
        (True, True, "console", False),
        (True, False, "json", False),
    ],
)
def test_progress_only_on_a_terminal_without_quiet_or_json_logs(
    tty: bool, quiet: bool, log_format: str, shown: bool
) -> None:
    """The display is wanted on a terminal only, and never with --quiet or JSON logs."""
    assert wants_progress(quiet=quiet, log_format=log_format, stream=_Stream(tty)) is shown


class _FakePaginator:
    """Hands out snapshots with growing counts; says when a few frames were drawn."""

    def __init__(self) -> None:
        self.calls = 0
        self.drawn = anyio.Event()

    def snapshot(self) -> RunSnapshot:
        self.calls += 1
        if self.calls >= 3:
            self.drawn.set()
        return snapshot(pages_done=min(self.calls, 40), requests=self.calls)


async def test_display_redraws_until_cancelled_and_leaves_the_final_frame() -> None:
    """The watcher draws frames until the runner cancels it, then the last figures stay."""
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system=None)
    paginator = _FakePaginator()
    display = ProgressDisplay(console, interval_s=0.001)
    async with anyio.create_task_group() as tg:
        tg.start_soon(display, paginator.snapshot)
        await paginator.drawn.wait()
        tg.cancel_scope.cancel()
    final = paginator.calls
    text = ANSI.sub("", out.getvalue())
    assert f"pages {min(final, 40)}/40" in text


# -- the command on a real terminal -------------------------------------------


def export_args(sim: RunningSimulator, out: Path, *extra: str) -> list[str]:
    return [
        "export",
        "--base-url",
        sim.base_url,
        "--users",
        ",".join(sim.user_ids),
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-01",
        "--page-size",
        "5",
        "--concurrency",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def run_on_terminal(args: list[str]) -> tuple[int, str]:
    """Run `python -m fetcher` with stdout and stderr on a pseudo-terminal; return its text."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
    env.update(SALESHANDY_API_KEY=KEY, TERM="xterm-256color")
    for name in (
        "NO_COLOR",
        "FORCE_COLOR",
        "TTY_COMPATIBLE",
        "TTY_INTERACTIVE",
        "COLUMNS",
        "LINES",
    ):
        env.pop(name, None)
    process = subprocess.Popen(  # noqa: ASYNC220  (reaped below, off the event loop)
        [sys.executable, "-m", "fetcher", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    try:
        # Read in a thread: the simulator serving the subprocess runs on this event loop.
        with anyio.fail_after(60):  # a hung child fails the test instead of hanging it
            raw = await anyio.to_thread.run_sync(_read_all, master, abandon_on_cancel=True)
    finally:
        if process.poll() is None:
            process.kill()
        code = await anyio.to_thread.run_sync(process.wait)
        os.close(master)
    return code, raw.decode(errors="replace")


async def test_progress_on_a_terminal_shows_pages_done_of_the_total(tmp_path: Path) -> None:
    """On a terminal, export draws the live display, ending at 'pages 40/40'."""
    async with serve(SimulatorConfig(team_size=200, latency_ms=10)) as sim:
        code, raw = await run_on_terminal(export_args(sim, tmp_path / "s.jsonl"))
    text = ANSI.sub("", raw)
    assert code == 0, text
    assert "pages 40/40" in text
    assert "\x1b[" in raw  # drawn in place, with cursor movements
    assert "page.written" not in text  # the display stands in for the per-page info lines
    assert "fetcher: done: 40 pages" in text


async def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """With stderr on a pipe there is no display and no escape codes."""
    async with serve(SimulatorConfig(team_size=200, latency_ms=10)) as sim:
        result = await run_cli(export_args(sim, tmp_path / "s.jsonl"))
    assert result.returncode == 0, result.stderr
    assert not PAGES.search(result.stderr)
    assert "\x1b[" not in result.stderr
    assert "fetcher: done: 40 pages" in result.stderr


@pytest.mark.parametrize("flags", [["--quiet"], ["--log-format", "json"]], ids=["quiet", "json"])
async def test_no_progress_on_a_terminal_with_quiet_or_json_logs(
    tmp_path: Path, flags: list[str]
) -> None:
    """--quiet and --log-format json turn the display off even on a terminal."""
    async with serve(SimulatorConfig(team_size=200)) as sim:
        code, raw = await run_on_terminal(export_args(sim, tmp_path / "s.jsonl", *flags))
    assert code == 0, raw
    assert not PAGES.search(ANSI.sub("", raw))


async def test_log_lines_print_whole_above_the_display(tmp_path: Path) -> None:
    """A warning logged while the display shows arrives as one intact line."""
    config = SimulatorConfig(team_size=200, latency_ms=10, fail_pages=frozenset({3}))
    async with serve(config) as sim:
        code, raw = await run_on_terminal(
            export_args(sim, tmp_path / "s.jsonl", "--max-attempts", "2")
        )
    text = ANSI.sub("", raw)
    assert code == 4, text
    failed = [line for line in text.splitlines() if "page.failed" in line]
    assert failed, text
    assert all("page=3" in line and "pages " not in line for line in failed)
    assert "pages 39/40" in text
