"""The live progress display: a few lines on standard error, redrawn four times a second.

::

    pages 262/324 (+1 queries not sized yet)    ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━
    queries 20/28  records 6,550  52.7 req/s  retries 11  ETA 0:00:02
      prospect  2024-06-03  pages 11/12  ━━━━━━━━━━━━━━━━━━━━━━━━━━━╸━━
      email     2024-06-03   pages 6/12  ━━━━━━━━━━━━━━━╺━━━━━━━━━━━━━━
    waiting for the rate limit until 14:02:07 (0.4 s)

:class:`ProgressDisplay` is a *watcher* (see :func:`fetcher.run.pool.export`):
the runner starts it with the run's :class:`~fetcher.run.pool.Paginator` and
cancels it when the fetch is over. It only reads
:meth:`~fetcher.run.pool.Paginator.snapshot`, so it cannot slow or break the
export. The figures are computed by pure functions (:func:`estimate_eta`,
:func:`estimate_total_pages`, :class:`RateMeter`) so they are tested with
fake snapshots and a fake clock, and :func:`render` builds the frame from a
snapshot alone.

Why rich: its ``Live`` redraws a region in place, knows the terminal's width,
and degrades to nothing where there is no terminal. The display is shown only
when standard error is a terminal, and not with ``--quiet`` or ``--log-format
json`` (see :func:`wants_progress`): a cron job or a log shipper never sees
escape codes.

How log lines and the display share the terminal: two measures, both taken
by the CLI while the display shows.

1. Log lines are *routed through the display*. ``Live`` replaces
   ``sys.stderr`` with a proxy that prints whole lines above the live region
   and redraws it below them; the CLI configures structlog with
   :func:`current_stderr`, a stream that looks ``sys.stderr`` up at every
   write, so log lines go through that proxy instead of into the middle of a
   frame. (structlog's own stream would be the original ``sys.stderr``,
   captured before the display started.)
2. The *default* console log level becomes ``warning``: the display replaces
   the one ``page.written`` line per page, which would otherwise scroll it off
   the screen. A level the user chose (``--log-level``, ``FETCHER_LOG_LEVEL``,
   the config file, ``--debug``) is kept.

So retries, failed pages and other warnings still appear, each on its own
line above the display, never torn through it. The console prints with
``soft_wrap``, so a long log line is not cut into pieces at the terminal's
width; the frame's own lines crop instead of wrapping (see ``_line``), so the
in-place redraw always knows how many lines it drew.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, cast

import anyio

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.table import Table

    from fetcher.run.pool import QueryView, RunSnapshot

__all__ = [
    "ProgressDisplay",
    "RateMeter",
    "current_stderr",
    "estimate_eta",
    "estimate_total_pages",
    "format_duration",
    "render",
    "wants_progress",
]

Clock = Callable[[], float]

#: Rows of active queries shown at most; the rest are summarised in one line.
MAX_QUERY_ROWS: Final = 8


def wants_progress(*, quiet: bool, log_format: str, stream: IO[str] | None = None) -> bool:
    """Whether to show the live display: on a terminal, unless quiet or logging JSON.

    Args:
        quiet: ``--quiet`` was given.
        log_format: ``console`` or ``json``; JSON logs are for machines.
        stream: where the display would go (default: standard error).
    """
    stream = stream if stream is not None else sys.stderr
    if quiet or log_format == "json":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the moment of the write."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    def fileno(self) -> int:
        return sys.stderr.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(sys.stderr, name)


def current_stderr() -> TextIO:
    """A stream that always writes to the current ``sys.stderr``.

    Give it to the logging setup while a :class:`ProgressDisplay` runs: the
    display swaps ``sys.stderr`` for a proxy that prints above the live region,
    and log lines written here follow that swap.
    """
    return cast("TextIO", _CurrentStderr())


class RateMeter:
    """Recent throughput: pages and requests per second over a sliding window.

    Args:
        window_s: how far back the rates look; long enough to smooth out a
            rate-limit pause, short enough to follow a change of pace.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, t: float, pages: int, requests: int) -> None:
        """Record the counters at time ``t`` (seconds, monotonic)."""
        self._samples.append((t, pages, requests))
        # Keep one sample at or before the window's start, so the window is full.
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.window_s:
            self._samples.popleft()

    def _rate(self, index: int) -> float | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        elapsed = last[0] - first[0]
        if elapsed <= 0:
            return None
        return (last[index] - first[index]) / elapsed

    @property
    def pages_per_s(self) -> float | None:
        """Pages finished per second recently; ``None`` before two samples."""
        return self._rate(1)

    @property
    def requests_per_s(self) -> float | None:
        """Requests sent per second recently; ``None`` before two samples."""
        return self._rate(2)


def estimate_total_pages(snapshot: RunSnapshot) -> float | None:
    """The run's pages: known sizes, plus an estimate for queries not sized yet.

    A query's size is known once its page 1 is back. Until then it is assumed
    to be as large as the average sized query (queries of one run are alike:
    the same users and page size over similar windows).

    Returns:
        The estimated total, or ``None`` while no query is sized.
    """
    unsized = snapshot.queries_unsized
    if unsized == 0:
        return float(snapshot.pages_total)
    sized = snapshot.queries_total - unsized
    if sized <= 0:
        return None
    return snapshot.pages_total + unsized * snapshot.pages_total / sized


def estimate_eta(snapshot: RunSnapshot, *, pages_per_s: float | None, now: float) -> float | None:
    """Seconds until the run is done, accounting for the rate limit.

    The larger of two bounds:

    * **throughput**: remaining pages at the recent rate of pages per second
      (which already includes the rate-limit pauses of the last seconds);
    * **pace**: the rate-limit pause under way, plus the remaining requests
      (remaining pages times the requests per page so far, retries included)
      at the limiter's current minimum interval.

    Args:
        snapshot: the run right now.
        pages_per_s: recent throughput (see :class:`RateMeter`), if known.
        now: the current epoch time, to read ``snapshot.waiting_until``.

    Returns:
        Seconds, or ``None`` when there is nothing to go on yet.
    """
    total = estimate_total_pages(snapshot)
    if total is None:
        return None
    settled = snapshot.pages_done + snapshot.failed_pages
    remaining = max(total - settled, 0.0)
    if remaining == 0:
        return 0.0
    per_page = snapshot.requests / settled if settled else 1.0
    wait = max((snapshot.waiting_until or now) - now, 0.0)
    pace = wait + remaining * max(per_page, 1.0) * snapshot.interval_s
    if pages_per_s is not None and pages_per_s > 0:
        return max(remaining / pages_per_s, pace)
    return pace if snapshot.interval_s > 0 else None


def format_duration(seconds: float | None) -> str:
    """``0:01:05`` for 65 s; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = math.ceil(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _clock_time(epoch: float) -> str:
    """``HH:MM:SS`` in the local time zone."""
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).astimezone().strftime("%H:%M:%S")


def _window_label(view: QueryView) -> str:
    start, end = view.window_start.date(), view.window_end.date()
    return str(start) if start == end else f"{start}..{end}"


def _pages_text(done: int, total: int | None) -> str:
    return f"pages {done}/{total if total is not None else '?'}"


def _line(*cells: RenderableType) -> Table:
    """One line of the frame, cropped to the width: it never wraps, whatever the print options.

    The console prints with ``soft_wrap`` (so log lines above the display stay
    whole); a frame line longer than the terminal would then wrap on screen and
    throw the in-place redraw off by a line. Grid cells crop instead.
    """
    from rich.table import Table  # noqa: PLC0415  (rich loads only when a display is shown)

    grid = Table.grid(padding=(0, 2))
    for _ in cells:
        grid.add_column(no_wrap=True, overflow="ellipsis")
    grid.add_row(*cells)
    return grid


def render(
    snapshot: RunSnapshot,
    *,
    pages_per_s: float | None,
    requests_per_s: float | None,
    now: float,
) -> RenderableType:
    """One frame of the display, from a snapshot and the recent rates.

    Args:
        snapshot: the run right now.
        pages_per_s: recent pages per second, for the ETA.
        requests_per_s: recent requests per second, shown as is.
        now: the current epoch time.
    """
    from rich.console import Group  # noqa: PLC0415  (rich loads only when a display is shown)
    from rich.progress_bar import ProgressBar  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    total = snapshot.pages_total
    unsized = snapshot.queries_unsized
    share = f"{snapshot.pages_done / total:.0%}" if total and not unsized else ""
    pages = Text(f"pages {snapshot.pages_done}/{total}", style="bold")
    if unsized:
        pages.append(f" (+{unsized} queries not sized yet)", style="dim")
    overall = _line(
        pages,
        share,
        ProgressBar(total=max(total, 1), completed=min(snapshot.pages_done, total), width=40),
    )
    eta = estimate_eta(snapshot, pages_per_s=pages_per_s, now=now)
    rate = "-" if requests_per_s is None else f"{requests_per_s:.1f}"
    stats = Text.assemble(
        f"queries {snapshot.queries_finished}/{snapshot.queries_total}  ",
        f"records {snapshot.records:,}  ",
        f"{rate} req/s  ",
        f"retries {snapshot.retries}  ",
        (f"failed pages {snapshot.failed_pages}  ", "red") if snapshot.failed_pages else "",
        f"ETA {format_duration(eta)}",
    )
    parts: list[RenderableType] = [overall, _line(stats)]
    if snapshot.active:
        rows = Table.grid(padding=(0, 2))
        rows.add_column(no_wrap=True, overflow="ellipsis")
        rows.add_column(no_wrap=True, overflow="ellipsis")
        rows.add_column(no_wrap=True, overflow="ellipsis", justify="right")
        rows.add_column(no_wrap=True, overflow="crop")
        for view in snapshot.active[:MAX_QUERY_ROWS]:
            size = view.pages_total
            rows.add_row(
                f"  {view.type}",
                _window_label(view),
                _pages_text(view.pages_done, size),
                ProgressBar(
                    total=max(size or 1, 1), completed=view.pages_done if size else 0, width=30
                ),
            )
        parts.append(rows)
        more = len(snapshot.active) - MAX_QUERY_ROWS
        if more > 0:
            parts.append(_line(Text(f"  ... {more} more queries in progress", style="dim")))
    if snapshot.waiting_until is not None and snapshot.waiting_until > now:
        parts.append(
            _line(
                Text(
                    f"waiting for the rate limit until {_clock_time(snapshot.waiting_until)} "
                    f"({snapshot.waiting_until - now:.1f} s)",
                    style="yellow",
                )
            )
        )
    return Group(*parts)


class ProgressDisplay:
    """The live display, as a watcher for :func:`fetcher.run.pool.export` / ``run_job``.

    Use it as ``run_job(settings, watch=ProgressDisplay())``; it polls the
    run's snapshot every ``interval_s`` and redraws until cancelled,
    then draws the final figures once more and leaves them on the screen
    (or clears the region if not a single page was fetched).

    Args:
        console: where to draw; standard error by default.
        interval_s: seconds between frames.
        clock: monotonic seconds, for the rates (injectable for tests).
        wall_clock: epoch seconds, for the rate-limit wait (injectable).
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        interval_s: float = 0.25,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        # soft_wrap: a log line printed above the display is not cut into
        # pieces at the terminal's width (the frame's own lines crop, see _line).
        from rich.console import Console  # noqa: PLC0415  (only when a display is shown)

        self.console = console if console is not None else Console(file=sys.stderr, soft_wrap=True)
        self.interval_s = interval_s
        self._clock = clock
        self._wall = wall_clock
        self.meter = RateMeter()

    def _draw(self, live: Live, snapshot_now: Callable[[], RunSnapshot]) -> RunSnapshot:
        """Take a snapshot, update the rates, redraw; return the snapshot."""
        snapshot = snapshot_now()
        self.meter.add(self._clock(), snapshot.pages_done, snapshot.requests)
        frame = render(
            snapshot,
            pages_per_s=self.meter.pages_per_s,
            requests_per_s=self.meter.requests_per_s,
            now=self._wall(),
        )
        live.update(frame, refresh=True)
        return snapshot

    async def __call__(self, snapshot_now: Callable[[], RunSnapshot]) -> None:
        """Redraw until cancelled (the runner cancels it when the fetch ends)."""
        from rich.live import Live  # noqa: PLC0415  (only when a display is shown)

        live = Live(
            console=self.console,
            auto_refresh=False,  # redrawn from this task: no thread of rich's own
            redirect_stdout=False,  # standard output may be a pipe; leave it alone
            redirect_stderr=True,  # log lines print above the display (module docstring)
            transient=False,
        )
        with live:
            try:
                while True:
                    self._draw(live, snapshot_now)
                    await anyio.sleep(self.interval_s)
            finally:
                # The last frame stays: the totals the run ended with (unless
                # nothing was fetched: then the error message says it all).
                if self._draw(live, snapshot_now).pages_done == 0:
                    live.transient = True
