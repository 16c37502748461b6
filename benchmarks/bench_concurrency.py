"""Concurrency speed-up: `fetcher export --concurrency 1` vs `--concurrency 16`.

Scenario (issue 2): a 2,000-user team, page size 10 (200 pages), 150 ms
simulated latency, no rate limit. Both runs use the real CLI against the same
simulator process. Target: concurrency 16 at least 8x faster.

    python -m benchmarks.bench_concurrency [--team-size 2000] [--latency-ms 150]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks._harness import emit_json, print_table, run_cli, simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--team-size", type=int, default=2000)
    parser.add_argument("--page-size", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=150.0)
    parser.add_argument("--levels", default="1,16")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    rows = []
    times: dict[int, float] = {}
    with (
        simulator(team_size=args.team_size, extra=["--latency-ms", str(args.latency_ms)]) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        users = Path(tmp) / "users.txt"
        users.write_text("\n".join(sim.user_ids))
        for level in levels:
            sim.reset()
            out, report = Path(tmp) / f"c{level}.jsonl", Path(tmp) / f"c{level}.json"
            wall, result = run_cli(
                [
                    "export",
                    "--base-url",
                    sim.base_url,
                    "--users-file",
                    str(users),
                    "--start",
                    "2024-01-01",
                    "--end",
                    "2024-01-31",
                    "--type",
                    "prospect",
                    "--page-size",
                    str(args.page_size),
                    "--concurrency",
                    str(level),
                    "--out",
                    str(out),
                    "--report",
                    str(report),
                    "--log-level",
                    "warning",
                ]
            )
            if result.returncode != 0:
                raise SystemExit(f"export failed ({result.returncode}): {result.stderr}")
            data = json.loads(report.read_text())
            times[level] = wall
            rows.append(
                [
                    level,
                    data["pages"],
                    data["records"],
                    data["requests"],
                    f"{wall:.2f}",
                    f"{sim.stats()['max_in_flight']}",
                ]
            )
    base = times[levels[0]]
    for row, level in zip(rows, levels, strict=True):
        row.append(f"{base / times[level]:.1f}x")
    print_table(
        f"fetcher export, {args.team_size} users, page size {args.page_size}, "
        f"{args.latency_ms:g} ms latency",
        ["concurrency", "pages", "records", "requests", "wall s", "max in flight", "speed-up"],
        rows,
    )
    emit_json(
        "concurrency",
        {
            "team_size": args.team_size,
            "page_size": args.page_size,
            "latency_ms": args.latency_ms,
            "wall_s": {str(k): round(v, 3) for k, v in times.items()},
            "speedup": round(base / times[levels[-1]], 2),
        },
    )


if __name__ == "__main__":
    main()
