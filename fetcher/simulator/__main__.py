"""``python -m fetcher.simulator``: serve the simulator until Ctrl-C or SIGTERM.

Prints one line, the base URL, so a script can read where to point fetcher::

    python -m fetcher.simulator --port 8080 --team-size 500 --write-users users.txt

Every flag maps to one :class:`SimulatorConfig` field (``--rate-window`` is
``rate_window_s``, ``--no-retry-after`` clears ``rate_retry_after``);
:func:`config_from_args` is that mapping.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from fetcher.simulator._app import serve
from fetcher.simulator._config import (
    FAULT_KINDS,
    CountOn,
    Envelope,
    ResetFormat,
    SimulatorConfig,
    WindowMode,
)
from fetcher.simulator._team import build_team

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m fetcher.simulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m fetcher.simulator",
        description="Serve a local stand-in for Saleshandy's team-stats API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, required=True, help="port to bind; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--team-size", type=int, default=50)
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="an accepted x-api-key (repeatable; default sim-key)",
    )
    parser.add_argument("--envelope", choices=get_args(Envelope), default="data")
    parser.add_argument("--string-counts", action="store_true", help="send counts as strings")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0)
    parser.add_argument(
        "--warm",
        action="store_true",
        help="compute every member's figures before serving (first pages in their latency)",
    )
    parser.add_argument("--max-page-size", type=int, default=1000)
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per window per key")
    parser.add_argument(
        "--key-rate-limits",
        help="one limit per --api-key, in order, comma-separated (each key's own plan)",
    )
    parser.add_argument("--rate-window", type=float, default=60.0, help="window length, seconds")
    parser.add_argument("--rate-limit-status", type=int, choices=(429, 400), default=429)
    parser.add_argument("--reset-format", choices=get_args(ResetFormat), default="epoch")
    parser.add_argument(
        "--rate-window-mode",
        choices=get_args(WindowMode),
        default="first-request",
        help="how windows are laid out (default %(default)s)",
    )
    parser.add_argument(
        "--rate-window-phase",
        type=float,
        default=None,
        metavar="S",
        help="where aligned windows start, seconds modulo the window (default: from the seed)",
    )
    parser.add_argument(
        "--rate-count-on",
        choices=get_args(CountOn),
        default="arrival",
        help="count a hit when the request arrives or when it is answered (default %(default)s)",
    )
    parser.add_argument(
        "--rate-count-refused", action="store_true", help="count refused requests as hits too"
    )
    parser.add_argument(
        "--no-retry-after",
        dest="rate_retry_after",
        action="store_false",
        help="refusals carry no retry-after header",
    )
    parser.add_argument(
        "--foreign-share",
        type=float,
        default=0.0,
        metavar="F",
        help="share (0..1) of the first key's budget another client spends (default 0)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0, help="0..1")
    parser.add_argument(
        "--fault-kinds",
        default=",".join(FAULT_KINDS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument("--stall-s", type=float, default=30.0)
    parser.add_argument(
        "--fail-page", type=int, action="append", default=[], help="page that always answers 500"
    )
    parser.add_argument(
        "--drift", type=float, default=0.0, help="counts grow while a query is paged (0)"
    )
    parser.add_argument(
        "--hidden-user", action="append", default=[], help="counted in totals, never served"
    )
    parser.add_argument(
        "--drop-field", action="append", default=[], help="leave this field out of every row"
    )
    parser.add_argument(
        "--extra-field", action="append", default=[], help="add this count field to every row"
    )
    parser.add_argument("--write-users", type=Path, help="write the team's user ids, one per line")
    return parser


async def _serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    async with serve(config, host, port) as simulator:
        sys.stdout.write(f"{simulator.base_url}\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The configuration parsed flags describe.

    Args:
        args: what :func:`build_parser` parsed.

    Raises:
        pydantic.ValidationError: naming the field (the flag) that is wrong.
    """
    return SimulatorConfig(
        seed=args.seed,
        team_size=args.team_size,
        api_keys=tuple(args.api_keys or ("sim-key",)),
        envelope=args.envelope,
        string_counts=args.string_counts,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        max_page_size=args.max_page_size,
        rate_limit=args.rate_limit,
        key_rate_limits=tuple(int(n) for n in (args.key_rate_limits or "").split(",") if n.strip()),
        rate_window_s=args.rate_window,
        rate_window_mode=args.rate_window_mode,
        rate_window_phase_s=args.rate_window_phase,
        rate_count_on=args.rate_count_on,
        rate_count_refused=args.rate_count_refused,
        rate_retry_after=args.rate_retry_after,
        rate_limit_status=args.rate_limit_status,
        reset_format=args.reset_format,
        foreign_share=args.foreign_share,
        warm=args.warm,
        fault_rate=args.fault_rate,
        fault_kinds=tuple(kind.strip() for kind in args.fault_kinds.split(",") if kind.strip()),
        stall_s=args.stall_s,
        fail_pages=frozenset(args.fail_page),
        drift=args.drift,
        hidden_users=frozenset(args.hidden_user),
        drop_fields=frozenset(args.drop_field),
        extra_fields=tuple(args.extra_field),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until interrupted, and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        parser.error(str(exc))
    if args.write_users is not None:
        # build_team is what the server runs on, so the file matches the served team.
        team = build_team(config.seed, config.team_size)
        args.write_users.write_text("".join(f"{m.user_id}\n" for m in team), encoding="utf-8")
    asyncio.run(_serve_forever(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
