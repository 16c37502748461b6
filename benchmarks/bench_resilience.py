"""Rate-limit utilisation and fault overhead (issue 3), each on one simulator process.

(a) limit-bound: the server allows 20 requests per 2 s window (fixed window), 200
    pages, 100 ms latency, and fetcher is given no rate limit: it must find the
    limit from the headers and refusals. Reports wall time against the ideal (the
    time the limit allows: one window per 20 requests, the last one's latency) and
    the share of requests refused. Targets: within 10% of ideal, refusals < 5%.
    Also run with integer-second reset headers (as NestJS sends them) and with the
    limit configured on the client (target: zero 429s).
(b) faults: 15% of requests get a fault (5xx, HTML gateway pages, dropped
    connections, truncated bodies, stalls past the client timeout), no rate limit.
    Target: every record, wall time at most 1.5x the fault-free run.

    python -m benchmarks.bench_resilience [--only a|b]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._harness import emit_json, print_table, run_cli, simulator


def export_args(base_url: str, users: Path, out: Path, report: Path, *extra: str) -> list[str]:
    return [
        "export", "--base-url", base_url, "--users-file", str(users),
        "--start", "2024-01-01", "--end", "2024-01-31", "--type", "prospect",
        "--page-size", "10", "--out", str(out), "--report", str(report),
        "--log-level", "error", *extra,
    ]  # fmt: skip


def run_one(sim: Any, tmp: Path, name: str, *extra: str) -> dict[str, Any]:
    users = tmp / "users.txt"
    users.write_text("\n".join(sim.user_ids))
    sim.reset()
    out, report = tmp / f"{name}.jsonl", tmp / f"{name}.json"
    wall, result = run_cli(export_args(sim.base_url, users, out, report, *extra))
    if result.returncode != 0:
        raise SystemExit(f"{name}: export failed ({result.returncode}): {result.stderr[-2000:]}")
    data = json.loads(report.read_text())
    stats = sim.stats()
    lines = out.read_bytes().count(b"\n")
    return {
        "name": name,
        "wall_s": wall,
        "fetch_s": data["duration_s"],
        "pages": data["pages"],
        "records": lines,
        "requests": data["requests"],
        "server_requests": stats["requests"],
        "refused": stats["rate_limited"],
        "faults": sum(stats["faults"].values()),
        "fetched_twice": len(stats["pages_fetched_twice"]),
    }


def bench_limit(tmp: Path) -> dict[str, Any]:
    limit, window, latency, team = 20, 2.0, 100.0, 2000
    pages = team // 10
    ideal = (math.ceil(pages / limit) - 1) * window + latency / 1000
    results = []
    for name, reset_format, extra in [
        ("headers (ms reset)", "epoch", ()),
        ("headers (whole-second reset)", "seconds", ()),
        ("--rate-limit 20/2s", "epoch", ("--rate-limit", "20/2s")),
    ]:
        server = [
            "--latency-ms", str(latency), "--rate-limit", str(limit),
            "--rate-window", str(window), "--reset-format", reset_format,
        ]  # fmt: skip
        with simulator(team_size=team, extra=server) as sim:
            results.append(run_one(sim, tmp, name.split()[0].strip("-"), *extra) | {"name": name})
    rows = [
        [
            r["name"], r["pages"], r["records"], r["server_requests"], r["refused"],
            f"{100 * r['refused'] / r['server_requests']:.1f}%", f"{r['fetch_s']:.2f}",
            f"{ideal:.2f}", f"{ideal / r['fetch_s']:.2f}",
        ]
        for r in results
    ]  # fmt: skip
    print_table(
        f"(a) limit-bound: {limit} requests / {window:g} s window, {pages} pages, "
        f"{latency:g} ms latency",
        [
            "client",
            "pages",
            "records",
            "requests",
            "429s",
            "refused",
            "fetch s",
            "ideal s",
            "util.",
        ],
        rows,
    )
    return {"ideal_s": ideal, "runs": results}


def bench_faults(tmp: Path, seeds: tuple[int, ...] = (7, 8, 9)) -> dict[str, Any]:
    team, latency = 20000, 100.0
    common = ["--latency-ms", str(latency), "--stall-s", "10"]
    client = ("--timeout", "1.5")
    results = []
    runs = [("fault-free", 0.0, seeds[0])] + [(f"15% faults, seed {s}", 0.15, s) for s in seeds]
    for name, rate, seed in runs:
        server = [*common, "--fault-rate", str(rate)]
        with simulator(seed=seed, team_size=team, extra=server) as sim:
            results.append(run_one(sim, tmp, f"faults-{seed}-{rate}", *client) | {"name": name})
    base = results[0]["fetch_s"]
    rows = [
        [
            r["name"], r["pages"], r["records"], r["server_requests"], r["faults"],
            r["fetched_twice"], f"{r['fetch_s']:.2f}", f"{r['fetch_s'] / base:.2f}x",
        ]
        for r in results
    ]  # fmt: skip
    print_table(
        f"(b) faults: {team // 10} pages, {latency:g} ms latency, "
        "client timeout 1.5 s, stalls 10 s",
        ["run", "pages", "records", "requests", "faults", "fetched twice", "fetch s", "vs clean"],
        rows,
    )
    return {"runs": results, "slowdown_max": max(r["fetch_s"] for r in results[1:]) / base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["a", "b"])
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "a"):
            out["limit"] = bench_limit(Path(tmp))
        if args.only in (None, "b"):
            out["faults"] = bench_faults(Path(tmp))
    emit_json("resilience", out)


if __name__ == "__main__":
    main()
