"""Start-up: what a process pays before it does anything, this tree against another.

    python -m benchmarks.bench_startup [--fetcher-root PATH] [--runs N] [--no-bytecode-cache]

For each tree (this one, and the one at ``--fetcher-root``, e.g. a worktree of
an older commit), the median of ``--runs`` fresh processes of:

* ``fetcher --help`` (process start to exit);
* ``python -c "import fetcher"``;
* ``fetcher export`` of one page: from the moment the process is spawned to
  the moment the simulator (its own process) receives the first team-stats
  request; both read ``CLOCK_MONOTONIC``, so the two clocks agree.

Target (issue 15): ``--help`` and start-to-first-request at most a third of
the other tree's. Both trees run against this tree's simulator.

The processes run with their bytecode cached (``PYTHONPYCACHEPREFIX``, a
temporary directory, written by each figure's warm-up run), as an installed
fetcher runs: an environment with ``PYTHONDONTWRITEBYTECODE=1`` (a container, a
CI runner) would otherwise compile every module of fetcher from source on every
start, about 50 ms here, and measure the compiler rather than the start-up.
``--no-bytecode-cache`` measures that way instead: the environment as it is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import emit_json, print_table, simulator
from benchmarks._limits import FetcherUnderTest


def _median_s(runs: int, once: Callable[[], float]) -> float:
    once()  # warm the disk cache: the first process of a tree reads its files cold
    return statistics.median(once() for _ in range(runs))


def _timed(argv: Sequence[str], env: dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
    return time.perf_counter() - started


def _to_first_request(env: dict[str, str], base_url: str, stats: Any, cwd: str) -> float:
    stats.reset()
    out = Path(cwd) / "one.jsonl"
    out.unlink(missing_ok=True)
    args = [
        "export", "--base-url", base_url, "--users", stats.user_ids[0],
        "--start", "2024-01-01", "--end", "2024-01-01", "--page-size", "10",
        "--out", str(out), "--state", str(Path(cwd) / "one.state.json"), "--fresh",
        "--log-level", "warning",
    ]  # fmt: skip
    spawned = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "fetcher", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=True,
    )
    events = stats.stats(events=True)["events"]
    first = min(e["t"] for e in events if e.get("query"))
    return float(first) - spawned


def _environment(tree: FetcherUnderTest, pycache: str | None) -> dict[str, str]:
    """The tree's environment; with ``pycache``, bytecode written there and read back."""
    env = tree.env()
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def measure_tree(
    tree: FetcherUnderTest, runs: int, sim: Any, *, pycache: str | None = None
) -> dict[str, float]:
    """Median seconds of each start-up figure for one tree (bytecode cached in ``pycache``)."""
    env = _environment(tree, pycache)
    with tempfile.TemporaryDirectory() as cwd:  # never the repository root (see FetcherUnderTest)
        fetcher = [sys.executable, "-m", "fetcher"]
        return {
            "help_s": _median_s(runs, lambda: _timed([*fetcher, "--help"], env, cwd)),
            "plan_help_s": _median_s(runs, lambda: _timed([*fetcher, "plan", "--help"], env, cwd)),
            "import_s": _median_s(
                runs, lambda: _timed([sys.executable, "-c", "import fetcher"], env, cwd)
            ),
            "to_first_request_s": _median_s(
                runs, lambda: _to_first_request(env, sim.base_url, sim, cwd)
            ),
        }


def main(argv: Sequence[str] | None = None) -> None:
    """Measure both trees and print the table and a ``BENCH`` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetcher-root", type=Path, help="the other tree (an older worktree)")
    parser.add_argument("--runs", type=int, default=7, help="processes per figure (median)")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run with the environment's bytecode setting (PYTHONDONTWRITEBYTECODE compiles "
        "every start)",
    )
    args = parser.parse_args(argv)
    trees = {"this tree": FetcherUnderTest()}
    if args.fetcher_root is not None:
        trees["other tree"] = FetcherUnderTest(args.fetcher_root.resolve())
    for tree in trees.values():
        tree.package()  # refuse a tree whose processes would import another fetcher
    with simulator(team_size=5) as sim, tempfile.TemporaryDirectory() as pycache:
        cache = None if args.no_bytecode_cache else pycache
        results = {
            name: measure_tree(tree, args.runs, sim, pycache=cache) for name, tree in trees.items()
        }
    names = list(results)
    rows = []
    for figure in ("help_s", "plan_help_s", "import_s", "to_first_request_s"):
        row: list[Any] = [figure, *(f"{results[n][figure]:.3f}" for n in names)]
        if len(names) == 2:
            row.append(f"{results[names[0]][figure] / results[names[1]][figure]:.2f}")
        rows.append(row)
    header = ["figure (median s)", *names, *(["this / other"] if len(names) == 2 else [])]
    print_table("start-up", header, rows)
    bytecode = "as the environment says" if args.no_bytecode_cache else "cached"
    dont_write = os.environ.get("PYTHONDONTWRITEBYTECODE")
    print(f"bytecode: {bytecode} (here PYTHONDONTWRITEBYTECODE={dont_write})")
    emit_json("startup", {"runs": args.runs, "bytecode": bytecode, "results": results})


if __name__ == "__main__":
    main()
