"""The nightly batch job: slices, both types, all users, checkpoints, SIGKILL, lock, catch-up."""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import signal
import sys
import weakref
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import duckdb
import pytest

from fetcher.app.cli import ExitCode
from fetcher.app.settings import load_settings
from fetcher.models import Page
from fetcher.run.checkpoint import Checkpointer, RunState
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from fetcher.spec import DEFAULT_PAGE_SIZE, QuerySpec
from tests.integration import KEY, assert_same_rows, read_jsonl
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parent.parent


def nightly_args(sim: RunningSimulator, out: Path, *extra: str) -> list[str]:
    return [
        "export",
        "--base-url", sim.base_url,
        "--all-users",
        "--start", "2024-03-25", "--end", "2024-04-02",
        "--timezone", "Europe/London",  # the clocks change on 2024-03-31
        "--slice", "day",
        "--type", "prospect,email",
        "--page-size", "10",
        "--out", str(out),
        "--log-level", "warning",
        *extra,
    ]  # fmt: skip


def by_query(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["_query"]].append(record)
    return grouped


def specs_from_state(state: dict[str, Any]) -> dict[str, QuerySpec]:
    """The run's queries, as its state file records them (each user batch stored once)."""
    batches = state["run"]["users"]
    specs = {}
    for key, query in state["run"]["queries"].items():
        described = dict(query["spec"])
        described["user_ids"] = batches[described.pop("users")]
        specs[key] = QuerySpec(**described)
    return specs


def assert_complete_export(sim: RunningSimulator, out: Path, specs: dict[str, QuerySpec]) -> None:
    """The file holds every query's full result, each record once, tagged with its window."""
    grouped = by_query(read_jsonl(out))
    assert set(grouped) == set(specs)
    for key, spec in specs.items():
        assert_same_rows(grouped[key], sim.expected_rows(spec.body(1)))
        windows = {(r["_window_start"], r["_window_end"]) for r in grouped[key]}
        assert windows == {(spec.body(1)["startDate"], spec.body(1)["endDate"])}


async def test_multi_slice_export_with_both_types_and_all_users(tmp_path: Path) -> None:
    """Daily slices across a DST change x both types x the whole team, every record once."""
    async with serve(SimulatorConfig(seed=3, team_size=45)) as sim:
        out, report = tmp_path / "s.jsonl", tmp_path / "r.json"
        result = await run_cli([*nightly_args(sim, out), "--report", str(report)])
        assert result.returncode == 0, result.stderr
        state = json.loads((tmp_path / "s.jsonl.state.json").read_text())
        specs = specs_from_state(state)
        assert len(specs) == 9 * 2  # nine days, two types
        assert_complete_export(sim, out, specs)
        data = json.loads(report.read_text())
    assert data["slices"] == 9
    assert data["status"] == "ok"
    starts = sorted({s.body(1)["startDate"] for s in specs.values()})
    assert starts[0] == "2024-03-25T00:00:00.000+00:00"
    assert starts[-1] == "2024-04-02T00:00:00.000+01:00"  # British Summer Time
    assert oct(os.stat(tmp_path / "s.jsonl.state.json").st_mode & 0o777) == "0o600"


async def kill_mid_run(
    args: list[str],
    state_path: Path,
    *,
    min_done: int = 0,
    sim: RunningSimulator | None = None,
    answered: int = 0,
) -> dict[str, Any]:
    """Start the CLI, SIGKILL it once a checkpoint records `min_done` pages; return that state.

    With ``sim``, the kill comes instead once the server has answered
    ``answered`` pages: at a moment that owes nothing to when checkpoints happen.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
    env["SALESHANDY_API_KEY"] = KEY
    process = await anyio.open_process([sys.executable, "-m", "fetcher", *args], env=env)
    with anyio.fail_after(60):
        while True:  # poll the checkpoint another process writes
            await anyio.sleep(0.05 if sim is None else 0.001)
            if sim is not None:
                if sum(e.kind == "ok" for e in sim.stats.events) >= answered:
                    break
            elif state_path.exists():  # noqa: ASYNC240
                state = json.loads(state_path.read_text())  # noqa: ASYNC240
                done = sum(
                    high - low + 1
                    for q in state["run"]["queries"].values()
                    for low, high in q["done"]
                )
                if done >= min_done:
                    break
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await process.aclose()
    final: dict[str, Any] = json.loads(state_path.read_text())  # noqa: ASYNC240
    assert final["run"]["status"] == "running"
    return final


def done_pages(state: dict[str, Any]) -> dict[str, set[int]]:
    return {
        key: {n for low, high in q["done"] for n in range(low, high + 1)}
        for key, q in state["run"]["queries"].items()
    }


async def test_killed_run_resumes_without_refetching_done_pages(tmp_path: Path) -> None:
    """SIGKILL mid-run, then the same command: exact dataset, done pages not fetched again."""
    config = SimulatorConfig(seed=5, team_size=150, latency_ms=15)
    async with serve(config) as sim:
        out = tmp_path / "s.jsonl"
        args = nightly_args(sim, out, "--concurrency", "3", "--checkpoint-interval", "0.05")
        state = await kill_mid_run(args, tmp_path / "s.jsonl.state.json", min_done=60)
        killed_at = anyio.current_time()
        specs = specs_from_state(state)
        done_before = done_pages(state)
        assert 60 <= sum(map(len, done_before.values())) < len(specs) * 15

        result = await run_cli(args)
        assert result.returncode == 0, result.stderr
        assert_complete_export(sim, out, specs)
        events = [e for e in sim.stats.events if e.t >= killed_at]
        for key, pages in done_before.items():
            query = sim.query_key(specs[key].body(1))
            refetched = [e.page for e in events if e.query == query and e.page in pages]
            assert not refetched, f"done pages fetched again: {key} {refetched}"
    assert "from the interrupted run" in result.stderr


async def test_killed_run_fetches_again_only_the_pages_in_flight_at_the_kill(
    tmp_path: Path,
) -> None:
    """Pages are checkpointed one by one: a kill costs the pages in flight, not whole queries.

    18 queries of 30 pages, killed at about 40%: every page the server had
    answered before the kill and that is fetched again must have been in
    flight (sent, or fetched and not yet durable): at most the workers (2 x
    concurrency) plus the stream between them and the sink (concurrency) plus
    the page being written. Checkpointing whole queries refetched every page
    of each query in progress.
    """
    concurrency = 8
    config = SimulatorConfig(seed=11, team_size=300, latency_ms=15)
    async with serve(config) as sim:
        out = tmp_path / "s.jsonl"
        args = nightly_args(
            sim, out, "--concurrency", str(concurrency), "--checkpoint-interval", "0.001"
        )
        state = await kill_mid_run(args, tmp_path / "s.jsonl.state.json", sim=sim, answered=216)
        killed_at = anyio.current_time()
        specs = specs_from_state(state)
        assert len(specs) == 18
        # Pages only: the run's first request (the team list, no query) is asked again
        # by every run and is no page fetched again.
        answered = {
            (e.query, e.page)
            for e in sim.stats.events
            if e.t < killed_at and e.kind == "ok" and e.query is not None
        }
        result = await run_cli(args)
        assert result.returncode == 0, result.stderr
        assert_complete_export(sim, out, specs)
        again = [
            (e.query, e.page)
            for e in sim.stats.events
            if e.t >= killed_at and (e.query, e.page) in answered
        ]
    in_flight_at_most = 2 * concurrency + concurrency + 1
    assert len(again) <= in_flight_at_most, f"{len(again)} answered pages fetched again"


async def test_killed_duckdb_run_resumes_without_duplicate_rows(tmp_path: Path) -> None:
    """SIGKILL mid-run into DuckDB, then the same command: every row once, none twice."""
    config = SimulatorConfig(seed=8, team_size=150, latency_ms=15)
    async with serve(config) as sim:
        out = tmp_path / "s.duckdb"
        args = nightly_args(sim, out, "--concurrency", "3", "--checkpoint-interval", "0.05")
        state = await kill_mid_run(args, tmp_path / "s.duckdb.state.json", min_done=45)
        specs = specs_from_state(state)
        result = await run_cli(args)
        assert result.returncode == 0, result.stderr
        expected = {
            (spec.type, spec.start.isoformat(timespec="milliseconds")): {
                r["userId"]: r for r in sim.expected_rows(spec.body(1))
            }
            for spec in specs.values()
        }
    with duckdb.connect(str(out), read_only=True) as db:
        rows = db.sql(
            "SELECT type, window_start, user_id, count(*), any_value(prospect_added),"
            " any_value(email_sent) FROM team_stats GROUP BY ALL"
        ).fetchall()
    assert len(rows) == sum(len(users) for users in expected.values())
    for report_type, start, user, copies, added, sent in rows:
        assert copies == 1
        want = expected[
            (
                report_type,
                start.astimezone(ZoneInfo("Europe/London")).isoformat(timespec="milliseconds"),
            )
        ][user]
        assert (added, sent) == (want.get("prospectAdded"), want.get("emailSent"))


async def test_second_run_on_the_same_output_is_refused_and_a_dead_lock_is_not(
    tmp_path: Path,
) -> None:
    """A live run's lock stops a second run; once it is killed, the next run proceeds."""
    async with serve(SimulatorConfig(team_size=200, latency_ms=30)) as sim:
        out = tmp_path / "s.jsonl"
        args = nightly_args(sim, out, "--concurrency", "1")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FETCHER_", "SALESHANDY_"))}
        env["SALESHANDY_API_KEY"] = KEY
        first = await anyio.open_process([sys.executable, "-m", "fetcher", *args], env=env)
        lock = tmp_path / "s.jsonl.state.json.lock"
        with anyio.fail_after(30):
            while not (lock.exists() and lock.read_text().strip()):  # noqa: ASYNC110
                await anyio.sleep(0.05)  # polling a file another process writes
        second = await run_cli(args)
        assert second.returncode == ExitCode.USAGE
        assert "another fetcher run" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGKILL)
        await first.wait()
        await first.aclose()
        third = await run_cli([*args, "--concurrency", "16"])  # the last flag wins
    assert third.returncode == 0, third.stderr


async def test_catch_up_fetches_only_the_days_since_the_last_complete_run(tmp_path: Path) -> None:
    """--catch-up starts after the last completed window; a second run is up to date."""
    async with serve(SimulatorConfig(seed=2, team_size=20)) as sim:
        out = tmp_path / "s.jsonl"

        def args(end: str) -> list[str]:
            return [
                "export", "--base-url", sim.base_url, "--all-users",
                "--start", "2024-01-01", "--end", end, "--slice", "day",
                "--out", str(out), "--report", str(tmp_path / "r.json"), "--catch-up",
            ]  # fmt: skip

        first = await run_cli(args("2024-01-03"))
        assert first.returncode == 0, first.stderr
        assert json.loads((tmp_path / "r.json").read_text())["slices"] == 3
        sim.stats.reset()
        # The job did not run for three nights: the next run fetches those three days.
        second = await run_cli(args("2024-01-06"))
        assert second.returncode == 0, second.stderr
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["slices"] == 3
        assert report["window"][0].startswith("2024-01-04T00:00:00.000")
        days = {r["_window_start"][:10] for r in read_jsonl(out)}
        assert days == {"2024-01-04", "2024-01-05", "2024-01-06"}
        sim.stats.reset()
        third = await run_cli(args("2024-01-06"))
        requests = sim.stats.requests
    assert third.returncode == 0, third.stderr
    assert "up to date" in third.stderr
    assert requests == 1  # the team member list only


@pytest.mark.slow
async def test_backfill_of_a_year_of_days_for_both_types_adds_up(tmp_path: Path) -> None:
    """365 daily slices x 2 types complete, and the report's figures add up."""
    async with serve(SimulatorConfig(seed=9, team_size=12, fault_rate=0.02)) as sim:
        out, report = tmp_path / "year.jsonl", tmp_path / "r.json"
        args = [
            "export",
            "--base-url",
            sim.base_url,
            "--all-users",
            "--start",
            "2023-01-01",
            "--end",
            "2023-12-31",
            "--slice",
            "day",
            "--type",
            "prospect,email",
            "--page-size",
            "5",
            "--concurrency",
            "32",
            "--out",
            str(out),
            "--report",
            str(report),
            "--log-level",
            "error",
        ]
        result = await run_cli(args)
        assert result.returncode == 0, result.stderr
        data = json.loads(report.read_text())
        server = sim.stats.snapshot()
    assert data["slices"] == 365
    assert data["queries"] == 730
    assert data["pages"] == 730 * 3  # 12 users in pages of 5
    assert data["records"] == 730 * 12 == len(read_jsonl(out))
    assert data["requests"] == data["pages"] + data["retries"]
    assert data["requests"] == server["requests"] - 1  # all but the team member list
    assert data["retries"] == sum(server["faults"].values())
    assert sum(q["pages"] for q in data["query_results"]) == data["pages"]


def test_example_config_is_valid_and_uses_the_simulator() -> None:
    """config/example.toml loads cleanly (its run is tested end to end below)."""
    settings = load_settings({}, config_file=ROOT / "config" / "example.toml")
    assert settings.uses_simulator
    assert settings.slice == "day"


def test_nightly_template_is_valid() -> None:
    """config/nightly.toml loads cleanly and points at the real API."""
    settings = load_settings({}, config_file=ROOT / "config" / "nightly.toml")
    assert settings.base_url.startswith("https://")
    assert settings.window == "yesterday"


async def test_example_config_runs_on_a_fresh_clone(tmp_path: Path) -> None:
    """`fetcher export --config config/example.toml` works with no key and no server."""
    result = await run_cli(
        ["export", "--config", str(ROOT / "config" / "example.toml")], key=None, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "fetcher-example" / "report.json").read_text())
    assert report["status"] == "ok"
    assert report["slices"] == 7
    assert report["records"] == 7 * 2 * 240


@pytest.mark.parametrize(
    ("zone", "now", "start", "end"),
    [
        # The day after the spring change: yesterday had 23 hours.
        (
            "Europe/London",
            "2024-04-01T06:00:00+01:00",
            "2024-03-31T00:00:00.000+00:00",
            "2024-03-31T23:59:59.999+01:00",
        ),
        (
            "Europe/London",
            "2024-10-28T06:00:00+00:00",
            "2024-10-27T00:00:00.000+01:00",
            "2024-10-27T23:59:59.999+00:00",
        ),
        (
            "America/New_York",
            "2024-03-11T06:00:00-04:00",
            "2024-03-10T00:00:00.000-05:00",
            "2024-03-10T23:59:59.999-04:00",
        ),
        (
            "America/New_York",
            "2024-11-04T06:00:00-05:00",
            "2024-11-03T00:00:00.000-04:00",
            "2024-11-03T23:59:59.999-05:00",
        ),
    ],
)
def test_relative_window_at_dst_boundaries_through_settings(
    zone: str, now: str, start: str, end: str
) -> None:
    """--window yesterday across each DST change gives local midnight to 23:59:59.999."""
    settings = load_settings({"window": "yesterday", "timezone": zone, "users": "a"})
    first, last = settings.resolved_window(now=dt.datetime.fromisoformat(now))
    assert first.isoformat(timespec="milliseconds") == start
    assert last.isoformat(timespec="milliseconds") == end
    assert first.tzinfo == ZoneInfo(zone)


def files_in(directory: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's (which says who holds it)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix != ".lock"}


def _edit_first_query(field: str, value: Any) -> Callable[[bytes], bytes]:
    def edit(raw: bytes) -> bytes:
        data = json.loads(raw)
        first = next(iter(data["run"]["queries"].values()))
        first[field] = value
        return json.dumps(data).encode()

    return edit


@pytest.mark.parametrize(
    ("corrupt", "named"),
    [
        (lambda raw: raw[: len(raw) // 2], "Invalid JSON"),  # cut short
        (_edit_first_query("done", "all of them"), ".done:"),
        (_edit_first_query("end", "soon"), ".end:"),
        (_edit_first_query("written_users", {"u1": 1}), ".written_users:"),
        (lambda raw: raw.replace(b'"version": 2', b'"version": 7'), "version:"),
    ],
    ids=["truncated", "done", "end", "written_users", "version"],
)
async def test_a_corrupted_state_file_exits_2_and_leaves_output_and_state_as_they_were(
    tmp_path: Path, corrupt: Callable[[bytes], bytes], named: str
) -> None:
    """A hand-edited or torn state file is refused before any request, naming the field."""
    async with serve(SimulatorConfig(seed=2, team_size=150, latency_ms=10)) as sim:
        out = tmp_path / "s.jsonl"
        state_path = tmp_path / "s.jsonl.state.json"
        args = nightly_args(sim, out, "--checkpoint-interval", "0.01")
        await kill_mid_run(args, state_path, min_done=20)
        state_path.write_bytes(corrupt(state_path.read_bytes()))
        before = files_in(tmp_path)
        requests_before = len(sim.stats.events)
        result = await run_cli(args)
        after = files_in(tmp_path)
        requests_after = len(sim.stats.events)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert f"state file {state_path}" in result.stderr
    assert named in result.stderr
    assert "--fresh" in result.stderr
    assert after.keys() == before.keys() and all(
        after[k] == before[k] for k in before if not k.endswith(".lock")
    )
    assert requests_after == requests_before


async def test_unknown_key_in_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    """A misspelt config key stops the CLI before any request, naming the file and key."""
    config = tmp_path / "bad.toml"
    config.write_text('base_url = "simulator"\nwindw = "yesterday"\n')
    result = await run_cli(["export", "--config", str(config), "--out", str(tmp_path / "x.jsonl")])
    assert result.returncode == ExitCode.USAGE
    assert "bad.toml: key 'windw'" in result.stderr


class _Record(dict[str, Any]):
    """A record that can be watched with a weak reference (a plain dict cannot)."""


class _DurableSink:
    """Just enough of a sink for a checkpoint: it says its output is durable."""

    async def checkpoint(self) -> dict[str, Any]:
        return {"offset": 1}


def day_spec(*ids: str, day: int = 1, page_size: int = DEFAULT_PAGE_SIZE) -> QuerySpec:
    """A prospect query for ``ids`` over one day of January 2024 (UTC)."""
    return QuerySpec(
        user_ids=ids,
        start=dt.datetime(2024, 1, day, tzinfo=dt.UTC),
        end=dt.datetime(2024, 1, day, 23, tzinfo=dt.UTC),
        type="prospect",
        page_size=page_size,
    )


async def test_a_written_page_is_not_kept_alive_until_its_checkpoint(tmp_path: Path) -> None:
    """Between checkpoints only a page's key, number and count are held, not its records.

    Held pages would keep up to a checkpoint interval's records in memory after the
    sink has them (a second of a fast run: thousands of pages).
    """
    spec = day_spec("u1", "u2", page_size=1)
    checkpoint = Checkpointer.open(tmp_path / "state.json", [spec], output="out.jsonl")
    record = _Record(userId="u1")
    watched = weakref.ref(record)
    checkpoint.written(Page(spec, 1, [record]))
    del record
    gc.collect()
    assert watched() is None

    await checkpoint.commit(_DurableSink(), [])  # type: ignore[arg-type]
    progress = RunState.load(tmp_path / "state.json")
    assert progress is not None
    assert progress.queries[spec.key].done == {1}
    assert progress.queries[spec.key].records == 1


def test_state_keeps_each_user_batch_once_and_apart(tmp_path: Path) -> None:
    """Equal batches are stored once; batches that only join alike stay apart."""
    specs = [day_spec("a\nb"), day_spec("a", "b"), day_spec("a", "b", day=2)]
    state = Checkpointer.open(tmp_path / "state.json", specs, output="out.jsonl").state
    assert len(state.users) == 2
    for one in specs:
        assert tuple(state.spec_of(one.key)["user_ids"]) == one.user_ids
