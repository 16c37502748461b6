"""``fetcher demo``: an export against the built-in simulator, on a fresh install.

It starts the simulator in-process on a free local port, exports a realistic
multi-page report into ``fetcher-demo/`` and says where the output is.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fetcher.client import Client
from fetcher.runner import export
from fetcher.simulator import SimulatorConfig, serve
from fetcher.sinks import JsonlSink
from fetcher.spec import QuerySpec

__all__ = ["run_demo"]

DEMO_KEY = "demo-key"


async def run_demo(*, out_dir: Path, team_size: int = 480, latency_ms: float = 80.0) -> int:
    """Run the demo export; return the exit code (0 on success)."""
    config = SimulatorConfig(
        seed=2024, team_size=team_size, api_keys=(DEMO_KEY,), latency_ms=latency_ms
    )
    async with serve(config) as sim:
        end = dt.datetime.now(dt.UTC).replace(hour=23, minute=59, second=59, microsecond=999000)
        start = (end - dt.timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
        specs = [
            QuerySpec(
                user_ids=tuple(m.user_id for m in sim.team),
                start=start,
                end=end,
                type=report_type,
                page_size=20,
            )
            for report_type in ("prospect", "email")
        ]
        out = out_dir / "team-stats.jsonl"
        print(  # noqa: T201
            f"fetcher demo: simulator with {team_size} users at {sim.base_url}; "
            f"exporting {len(specs)} reports, {latency_ms:g} ms per request"
        )
        async with Client(api_key=DEMO_KEY, base_url=sim.base_url) as client:
            summary = await export(specs, JsonlSink(out), client=client)
    print(  # noqa: T201
        f"fetcher demo: {summary.status}: {summary.pages} pages, {summary.records} records, "
        f"{summary.requests} requests in {summary.duration_s:.1f}s\n"
        f"fetcher demo: output written to {out.resolve()}"
    )
    return 0 if summary.ok else 4
