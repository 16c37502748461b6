"""``python -m fetcher.simulator``: serve the simulator until Ctrl-C or SIGTERM.

Prints one line, the base URL, so a script can read where to point fetcher::

    python -m fetcher.simulator --port 8080 --team-size 500 --write-users users.txt
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
from fetcher.simulator._config import FAULT_KINDS, Envelope, ResetFormat, SimulatorConfig
from fetcher.simulator._team import build_team

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--max-page-size", type=int, default=1000)
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per window per key")
    parser.add_argument("--rate-window", type=float, default=60.0, help="window length, seconds")
    parser.add_argument("--rate-limit-status", type=int, choices=(429, 400), default=429)
    parser.add_argument("--reset-format", choices=get_args(ResetFormat), default="epoch")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until interrupted, and return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            seed=args.seed,
            team_size=args.team_size,
            api_keys=tuple(args.api_keys or ("sim-key",)),
            envelope=args.envelope,
            string_counts=args.string_counts,
            latency_ms=args.latency_ms,
            latency_jitter_ms=args.latency_jitter_ms,
            max_page_size=args.max_page_size,
            rate_limit=args.rate_limit,
            rate_window_s=args.rate_window,
            rate_limit_status=args.rate_limit_status,
            reset_format=args.reset_format,
            fault_rate=args.fault_rate,
            fault_kinds=tuple(kind.strip() for kind in args.fault_kinds.split(",") if kind.strip()),
            stall_s=args.stall_s,
            fail_pages=frozenset(args.fail_page),
            drift=args.drift,
            hidden_users=frozenset(args.hidden_user),
            drop_fields=frozenset(args.drop_field),
            extra_fields=tuple(args.extra_field),
        )
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
