"""fetcher as a dlt source: real dlt pipelines into DuckDB against the simulator on a real port."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

dlt = pytest.importorskip("dlt", reason="dlt is in the `dlt` and `dev` extras")

import duckdb  # noqa: E402
from anyio.from_thread import start_blocking_portal  # noqa: E402
from dlt.common.normalizers.naming.snake_case import NamingConvention  # noqa: E402
from dlt.pipeline.exceptions import PipelineStepFailed  # noqa: E402

from fetcher.errors import AuthError, ConfigError  # noqa: E402
from fetcher.integrations.dlt import (  # noqa: E402
    PRIMARY_KEY,
    WORKSPACE_PRIMARY_KEY,
    IncompleteExtractError,
    IncompleteLoadError,
    raise_for_incomplete,
    rows,
    team_stats_source,
)
from fetcher.models import Page  # noqa: E402
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve  # noqa: E402
from fetcher.spec import QuerySpec  # noqa: E402
from tests.integration import KEY  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UTC = dt.UTC
#: What dlt makes of the API's field names (its default naming convention).
SNAKE = NamingConvention()


@contextmanager
def simulator(**config: Any) -> Iterator[RunningSimulator]:
    """The simulator on a free local port, served from a thread of its own.

    A dlt pipeline runs synchronously in the test's thread, so the server needs an
    event loop that the test does not block.
    """
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(serve(SimulatorConfig(**config))) as sim,
    ):
        yield sim


@pytest.fixture(autouse=True)
def _dlt_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own working directory (dlt reads `.dlt/` there), no telemetry, our key."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
    monkeypatch.setenv("SALESHANDY_API_KEY", KEY)
    monkeypatch.delenv("SOURCES__SALESHANDY__API_KEY", raising=False)


_names = itertools.count()


def pipeline(tmp_path: Path, name: str = "saleshandy") -> Any:
    return dlt.pipeline(
        pipeline_name=f"{name}_{next(_names)}",
        destination=dlt.destinations.duckdb(str(tmp_path / "stats.duckdb")),
        dataset_name="saleshandy",
        pipelines_dir=str(tmp_path / "pipelines"),
    )


def table(tmp_path: Path) -> list[dict[str, Any]]:
    """Every row of saleshandy.team_stats, as dicts without dlt's own columns."""
    with duckdb.connect(str(tmp_path / "stats.duckdb"), read_only=True) as connection:
        result = connection.execute("SELECT * FROM saleshandy.team_stats")
        names = [column[0] for column in result.description]
        return [
            {k: v for k, v in zip(names, row, strict=True) if not k.startswith("_dlt")}
            for row in result.fetchall()
        ]


def day(n: int) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(2024, 1, n, tzinfo=UTC)
    return start, start + dt.timedelta(days=1, milliseconds=-1)


Rows = dict[tuple[Any, ...], dict[str, Any]]


def expected_table(sim: RunningSimulator, specs: list[QuerySpec]) -> Rows:
    """The simulator's dataset for these queries, as dlt names its columns, by primary key."""
    out = {}
    for spec in specs:
        for record in sim.expected_rows(spec.body(1)):
            row = {SNAKE.normalize_identifier(k): v for k, v in record.items()}
            row["user_id"] = row.pop("user_id")
            row |= {"window_start": spec.start, "window_end": spec.end}
            row |= {"type": spec.type, "count_by": spec.count_by}
            out[tuple(row[k] for k in PRIMARY_KEY)] = row
    return out


def assert_table_is(tmp_path: Path, expected: Rows) -> None:
    """The table holds exactly the expected rows: none missing, none twice, none different."""
    got = table(tmp_path)
    keys = [tuple(row[k] for k in PRIMARY_KEY) for row in got]
    assert len(keys) == len(set(keys)), "a primary key appears twice"
    assert set(keys) == set(expected), (
        f"missing {len(set(expected) - set(keys))}, unexpected {len(set(keys) - set(expected))}"
    )
    for row in got:
        want = expected[tuple(row[k] for k in PRIMARY_KEY)]
        # Metrics of the other report type are NULL columns in this row.
        assert {k: v for k, v in row.items() if v is not None} == want


def page_requests(sim: RunningSimulator) -> list[Any]:
    """The team-stats requests the simulator received (the member list has no page)."""
    return [event for event in sim.stats.events if event.page is not None]


def specs_of(
    sim: RunningSimulator, days: list[int], types: list[str], size: int
) -> list[QuerySpec]:
    return [
        QuerySpec(
            user_ids=tuple(sim.user_ids),
            start=day(n)[0],
            end=day(n)[1],
            type=report,  # type: ignore[arg-type]
            page_size=size,
        )
        for n in days
        for report in types
    ]


def test_rows_equal_the_dataset_and_a_second_run_leaves_them_unchanged(tmp_path: Path) -> None:
    """Two days x both types into DuckDB: every row once, typed; the same run again adds none."""
    with simulator(seed=5, team_size=57) as sim:
        settings: dict[str, Any] = {
            "base_url": sim.base_url,
            "users": sim.user_ids,
            "start": "2024-01-01",
            "end": "2024-01-02",  # whole days, as `fetcher export` reads them
            "slice": "day",
            "type": ["prospect", "email"],
            "page_size": 10,
        }
        expected = expected_table(sim, specs_of(sim, [1, 2], ["prospect", "email"], 10))
        runs = pipeline(tmp_path)
        info = runs.run(team_stats_source(**settings))
        assert not info.has_failed_jobs
        assert sim.stats.pages_fetched_twice() == []
        # one probe, then 4 queries of 6 pages (57 users, 10 a page)
        assert (sim.stats.requests, len(page_requests(sim))) == (25, 24)
        assert_table_is(tmp_path, expected)
        assert len(expected) == 4 * 57

        runs.run(team_stats_source(**settings))
        assert_table_is(tmp_path, expected)  # merged on the primary key: nothing added
    with duckdb.connect(str(tmp_path / "stats.duckdb"), read_only=True) as connection:
        types = dict(
            connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'saleshandy' AND table_name = 'team_stats'"
            ).fetchall()
        )
    assert types["window_start"] == types["window_end"] == "TIMESTAMP WITH TIME ZONE"
    assert types["prospect_added"] == types["email_sent"] == types["un_subscribed"] == "BIGINT"
    assert types["user_id"] == "VARCHAR"
    assert "userid" not in types and "user_id__v_text" not in types  # one spelling per field


def test_catch_up_after_a_simulated_day_fetches_only_the_new_slice(tmp_path: Path) -> None:
    """`last 3 days` with catch_up: the next day's run asks for that day only; then nothing."""
    first_now = dt.datetime(2024, 1, 10, 8, 0, tzinfo=UTC)
    with simulator(seed=6, team_size=23) as sim:
        settings: dict[str, Any] = {
            "base_url": sim.base_url,
            "users": sim.user_ids,
            "window": "last 3 days",
            "slice": "day",
            "catch_up": True,
            "page_size": 10,
        }
        runs = pipeline(tmp_path)
        runs.run(team_stats_source(now=first_now, **settings))
        assert_table_is(tmp_path, expected_table(sim, specs_of(sim, [7, 8, 9], ["prospect"], 10)))
        state = runs.state["sources"]["saleshandy"]["resources"]["team_stats"]
        assert list(state["completed_through"].values()) == ["2024-01-09T23:59:59.999+00:00"]

        sim.reset()
        runs.run(team_stats_source(now=first_now + dt.timedelta(days=1), **settings))
        new_slice = specs_of(sim, [10], ["prospect"], 10)
        assert {e.query for e in page_requests(sim)} == {sim.query_key(new_slice[0].body(1))}
        assert len(page_requests(sim)) == 3  # 23 users, 10 a page
        everything = specs_of(sim, [7, 8, 9, 10], ["prospect"], 10)
        assert_table_is(tmp_path, expected_table(sim, everything))

        sim.reset()
        runs.run(team_stats_source(now=first_now + dt.timedelta(days=1, hours=5), **settings))
        assert page_requests(sim) == []  # up to date: only the probe went out
        assert sim.stats.requests == 1
        assert_table_is(tmp_path, expected_table(sim, everything))


def test_a_refused_key_raises_before_any_page_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong key: the probe fails with fetcher's AuthError; no team-stats page was asked for."""
    wrong = "not-the-key-4711"
    monkeypatch.setenv("SALESHANDY_API_KEY", wrong)
    with simulator(seed=7, team_size=30) as sim:
        source = team_stats_source(base_url=sim.base_url, users=sim.user_ids, window="yesterday")
        with pytest.raises(PipelineStepFailed) as failed:
            pipeline(tmp_path).run(source)
        assert page_requests(sim) == []
        assert sim.stats.requests == 1
    cause = failed.value.__cause__
    while cause is not None and not isinstance(cause, AuthError):
        cause = cause.__cause__
    assert isinstance(cause, AuthError), failed.value
    # The one request sent was the probe (a refused page would name its query).
    assert cause.page is not None and cause.page.query == "team-member-list"
    assert "Invalid token" in str(failed.value)
    assert wrong not in str(failed.value)
    assert not any(wrong.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("settings", "field", "says"),
    [
        ({"page_size": 0}, "page_size=", "greater than or equal to 1"),
        ({"pagesize": 10}, "pagesize=", "unknown setting"),
        ({"type": ["prospect"], "order_by": "emailSent"}, "order_by=", "not a prospect metric"),
        ({"window": "last fortnight"}, "window=", "last fortnight"),
        ({"start": "2024-02-01", "end": "2024-01-01", "window": None}, "start=", "swap"),
        ({"out": "stats.duckdb"}, "out=", "destination"),
        ({"timezone": "Mars/Olympus"}, "timezone=", "unknown time zone"),
        ({"api_key": "sk-in-code"}, "api_key=", "SALESHANDY_API_KEY"),
    ],
)
def test_invalid_settings_raise_before_any_request(
    settings: dict[str, Any], field: str, says: str
) -> None:
    """A bad setting raises ConfigError from team_stats_source, naming the keyword; nothing sent."""
    with simulator(seed=8, team_size=5) as sim:
        arguments: dict[str, Any] = {"base_url": sim.base_url, "users": sim.user_ids}
        arguments |= {"window": "yesterday", **settings}
        arguments = {k: v for k, v in arguments.items() if v is not None}
        with pytest.raises(ConfigError) as error:
            team_stats_source(**arguments)
        assert sim.stats.requests == 0
    assert error.value.field == field
    assert says in error.value.message


def test_no_key_anywhere_is_a_config_error_naming_both_places(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without SALESHANDY_API_KEY or dlt's secret, team_stats_source says where to put one."""
    monkeypatch.delenv("SALESHANDY_API_KEY")
    with pytest.raises(ConfigError, match=r"SALESHANDY_API_KEY.*sources\.saleshandy\.api_key"):
        team_stats_source(users=["a"], window="yesterday")


def test_the_key_from_dlt_secrets_and_settings_from_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key from dlt's secrets; `config=` reads the same TOML `fetcher export` reads."""
    secret = "dlt-secret-key-5150"
    monkeypatch.delenv("SALESHANDY_API_KEY")
    # dlt's environment provider: what dlt.secrets["sources.saleshandy.api_key"] reads
    # first (secrets.toml is read from the project directory dlt found at start-up).
    monkeypatch.setenv("SOURCES__SALESHANDY__API_KEY", secret)
    assert dlt.secrets["sources.saleshandy.api_key"] == secret
    with simulator(seed=9, team_size=14, api_keys=(secret,)) as sim:
        config = tmp_path / "nightly.toml"
        config.write_text(
            f'base_url = "{sim.base_url}"\nusers = {sim.user_ids!r}\n'
            'start = "2024-01-03"\nend = "2024-01-03"\npage_size = 50\n'
            # the command's outputs: ignored here, so one file serves both
            'out = "team-stats.duckdb"\nstate = "nightly.state.json"\n'
        )
        assert tomllib.loads(config.read_text())["out"] == "team-stats.duckdb"
        pipeline(tmp_path).run(team_stats_source(config=config, page_size=5))  # keyword wins
        assert len(page_requests(sim)) == 3  # 14 users, 5 a page
        assert_table_is(tmp_path, expected_table(sim, specs_of(sim, [3], ["prospect"], 5)))
    assert not (tmp_path / "team-stats.duckdb").exists()
    assert not (tmp_path / "nightly.state.json").exists()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    assert not [p for p in files if secret.encode() in p.read_bytes()]


def one_day_of_45(sim: RunningSimulator, **extra: Any) -> dict[str, Any]:
    """2024-01-05 for the whole team, 10 a page (5 pages), 2 tries a page."""
    return {
        "base_url": sim.base_url,
        "users": sim.user_ids,
        "start": "2024-01-05",
        "end": "2024-01-05",
        "page_size": 10,
        "max_attempts": 2,
        **extra,
    }


def test_an_incomplete_run_raises_after_every_other_page_naming_the_missing_ones(
    tmp_path: Path,
) -> None:
    """Page 3 always fails: every other page is fetched first, then the error names page 3."""
    with simulator(seed=10, team_size=45, fail_pages=frozenset({3})) as sim:
        settings = one_day_of_45(sim, catch_up=True)
        runs = pipeline(tmp_path)
        with pytest.raises(PipelineStepFailed) as failed:
            runs.run(team_stats_source(**settings))
        answered = sorted(e.page for e in page_requests(sim) if e.status == 200)
    assert answered == [1, 2, 4, 5]
    cause = failed.value.__cause__
    while cause is not None and not isinstance(cause, IncompleteExtractError):
        cause = cause.__cause__
    assert isinstance(cause, IncompleteExtractError), failed.value
    assert "page 3 of prospect 2024-01-05T00:00:00.000+00:00..2024-01-05T23:59:59.999+00:00" in (
        cause.message
    )
    assert [f.page for f in cause.summary.failed_pages] == [3]
    assert "page 3 of prospect" in str(failed.value)
    assert "completed_through" not in str(runs.state)  # the catch-up position did not move


def slow_one_day_source(sim: RunningSimulator, day: str) -> Any:
    """One day of the whole team, 10 a page, 2 requests in flight: pages come one by one."""
    return team_stats_source(
        base_url=sim.base_url, users=sim.user_ids, start=day, end=day, page_size=10,
        concurrency=2,
    )  # fmt: skip


def test_pages_reach_dlt_as_they_arrive() -> None:
    """The first rows are yielded while most pages are still to be asked for (no buffering)."""
    with simulator(seed=11, team_size=200, latency_ms=20) as sim:
        source = slow_one_day_source(sim, "2024-01-06")
        seen_at_first = None
        rows_seen = 0
        for _row in source.resources["team_stats"]:
            if seen_at_first is None:
                seen_at_first = sim.stats.requests
            rows_seen += 1
        total = sim.stats.requests
    assert (rows_seen, total) == (200, 21)  # the probe and 20 pages
    # at most: the probe, the stream's buffer (2 x concurrency) and every worker's page
    assert seen_at_first is not None and seen_at_first <= 1 + 4 + 4 + 1 < total


def test_the_built_in_simulator_needs_no_key_and_no_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`base_url="simulator"`, as for `fetcher export`: a trial run of every member, no key."""
    monkeypatch.delenv("SALESHANDY_API_KEY")
    source = team_stats_source(
        base_url="simulator", simulator={"team_size": 12, "latency_ms": 0}, start="2024-01-02",
        end="2024-01-03", slice="day", page_size=5,
    )  # fmt: skip
    pipeline(tmp_path).run(source)
    got = table(tmp_path)
    assert len(got) == len({(r["user_id"], r["window_start"]) for r in got}) == 2 * 12


def test_a_resource_closed_early_stops_fetching() -> None:
    """A resource closed after one page (add_limit) stops the run; nothing hangs."""
    with simulator(seed=13, team_size=300, latency_ms=5) as sim:
        source = slow_one_day_source(sim, "2024-01-07")
        first = list(source.resources["team_stats"].add_limit(1))
        sent = sim.stats.requests
    assert len(first) == 10  # one page of rows
    assert sent < 31  # the probe and 30 pages: most were never asked for


def test_rows_move_the_user_id_and_add_the_window_once() -> None:
    """A record's user id field becomes `user_id` (not a copy); the key columns come first."""
    spec = QuerySpec(user_ids=("u1",), start=day(1)[0], end=day(1)[1], type="email")
    page = Page(
        query=spec,
        number=1,
        records=[{"id": "u1", "firstName": "Ada", "emailSent": 4}],
        records_path="payload.data",
    )
    [row] = rows(page, user_id_field="id")
    assert row == {
        "window_start": day(1)[0],
        "window_end": day(1)[1],
        "type": "email",
        "count_by": "absolute",
        "user_id": "u1",
        "firstName": "Ada",
        "emailSent": 4,
    }
    assert list(row)[:5] == list(PRIMARY_KEY)


def test_dlt_is_an_optional_extra() -> None:
    """The base install does not depend on dlt; the `dlt` extra does, pinned like the rest."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [r for r in project["dependencies"] if r.startswith("dlt")]
    assert project["optional-dependencies"]["dlt"] == ["dlt[duckdb]>=1.0"]
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert f"dlt=={dlt.__version__}" in pins


def readme_dlt_example() -> tuple[str, str, str]:
    """The README's dlt example: its dlt config line, the Python block, the DuckDB one-liner."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## dlt: fetcher as a dlt source", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.+?)\n```", section, flags=re.DOTALL)
    lines = [
        line
        for block in re.findall(r"```sh\n(.+?)\n```", section, flags=re.DOTALL)
        for line in block.splitlines()
    ]
    [config] = [line for line in lines if line.startswith("mkdir -p .dlt")]
    [query] = [line for line in lines if line.startswith('python -c "import duckdb')]
    return config, code, query.removeprefix("python -c ").strip('"')


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    """The README's pipeline, at the simulator (FETCHER_BASE_URL), loads 7 days x 2 types."""
    config, code, query = readme_dlt_example()
    assert (
        'dlt.pipeline(pipeline_name="saleshandy", destination="duckdb", dataset_name="saleshandy")'
        in code
    )
    with simulator(seed=12, team_size=9) as sim:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "DLT_DATA_DIR": str(tmp_path / "dlt-data"),
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "SALESHANDY_API_KEY": KEY,
            "FETCHER_BASE_URL": sim.base_url,
        }
        subprocess.run(["bash", "-c", config], cwd=tmp_path, env=env, timeout=10, check=True)
        ran = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "LOADED and contains no failed jobs" in ran.stdout
        shown = subprocess.run(
            [sys.executable, "-c", query], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=60, check=True,
        )  # fmt: skip
    assert "user_id" in shown.stdout and "replied" in shown.stdout
    with duckdb.connect(str(tmp_path / "team_stats.duckdb"), read_only=True) as connection:
        counted = connection.execute(
            "SELECT count(*), count(DISTINCT (window_start, type, user_id)), "
            "count(DISTINCT window_start) FROM saleshandy.team_stats"
        ).fetchone()
    assert counted == (7 * 2 * 9, 7 * 2 * 9, 7)


def test_on_incomplete_load_loads_what_was_fetched_then_raises_naming_the_missing_pages(
    tmp_path: Path,
) -> None:
    """`on_incomplete="load"`: the fetched rows are loaded, then raise_for_incomplete fails."""
    with simulator(seed=10, team_size=45, fail_pages=frozenset({3})) as sim:
        settings = one_day_of_45(sim, catch_up=True)
        runs = pipeline(tmp_path)
        runs.run(team_stats_source(on_incomplete="load", **settings))  # no raise: loaded
        with pytest.raises(IncompleteLoadError) as failed:
            raise_for_incomplete(runs)
        expected = expected_table(sim, specs_of(sim, [5], ["prospect"], 10))
    loaded = table(tmp_path)
    # Every user but the ten of page 3 is in the table, each once.
    assert len(loaded) == len(expected) - 10
    assert len({row["user_id"] for row in loaded}) == len(loaded)
    assert [m for m in failed.value.missing if m.startswith("page 3 of prospect")]
    assert "page 3 of prospect" in str(failed.value)
    resource = runs.state["sources"]["saleshandy"]["resources"]["team_stats"]
    assert resource["completed_through"] == {}  # the catch-up position did not move


def test_raise_for_incomplete_is_quiet_after_a_complete_run(tmp_path: Path) -> None:
    """A complete run clears what an earlier short one left: raise_for_incomplete passes."""
    with simulator(seed=10, team_size=45, fail_pages=frozenset({3})) as sim:
        settings = one_day_of_45(sim)
        runs = pipeline(tmp_path)
        runs.run(team_stats_source(on_incomplete="load", **settings))
        with pytest.raises(IncompleteLoadError):
            raise_for_incomplete(runs)
    with simulator(seed=10, team_size=45) as healthy:
        settings["base_url"], settings["users"] = healthy.base_url, healthy.user_ids
        runs.run(team_stats_source(on_incomplete="load", **settings))
    raise_for_incomplete(runs)
    assert len(table(tmp_path)) == 45


def test_on_incomplete_must_be_raise_or_load() -> None:
    """A misspelt choice is a ConfigError naming the keyword, before anything runs."""
    with pytest.raises(ConfigError, match="on_incomplete="):
        team_stats_source(users=["u1"], window="yesterday", on_incomplete="ignore")  # type: ignore[arg-type]


ACME, GLOBEX = "dlt-acme-key-0123456789", "dlt-globex-key-9876543210"


def workspaces_config(tmp_path: Path, sim: RunningSimulator) -> Path:
    """Two workspaces on one simulator: the same team under two keys."""
    config = tmp_path / "job.toml"
    config.write_text(
        f'base_url = "{sim.base_url}"\nusers = {sim.user_ids!r}\n'
        'start = "2024-01-03"\nend = "2024-01-03"\npage_size = 5\n'
        '\n[[workspaces]]\nname = "acme"\napi_key_env = "ACME_SALESHANDY_KEY"\n'
        '\n[[workspaces]]\nname = "globex"\napi_key_env = "GLOBEX_SALESHANDY_KEY"\n'
    )
    return config


def test_workspaces_each_with_its_key_and_the_workspace_in_the_primary_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each workspace asks with its own key; a user of two workspaces is two rows, kept on merge."""
    monkeypatch.delenv("SALESHANDY_API_KEY")
    monkeypatch.setenv("ACME_SALESHANDY_KEY", ACME)
    monkeypatch.setenv("GLOBEX_SALESHANDY_KEY", GLOBEX)
    with simulator(seed=12, team_size=14, api_keys=(ACME, GLOBEX)) as sim:
        config = workspaces_config(tmp_path, sim)
        runs = pipeline(tmp_path)
        runs.run(team_stats_source(config=config))
        runs.run(team_stats_source(config=config))  # merge: nothing doubles
        assert len(page_requests(sim)) == 2 * 2 * 3  # two runs x two keys x 3 pages
        expected = expected_table(sim, specs_of(sim, [3], ["prospect"], 5))
    got = table(tmp_path)
    assert sorted({row["workspace"] for row in got}) == ["acme", "globex"]
    keys = [tuple(row[k] for k in WORKSPACE_PRIMARY_KEY) for row in got]
    assert len(keys) == len(set(keys)) == 2 * len(expected)
    for name in ("acme", "globex"):
        mine = {tuple(r[k] for k in PRIMARY_KEY) for r in got if r["workspace"] == name}
        assert mine == set(expected)
    columns = (
        duckdb.connect(str(tmp_path / "stats.duckdb"))
        .execute(
            "select column_name from information_schema.columns "
            "where table_schema = 'saleshandy' and table_name = 'team_stats'"
        )
        .fetchall()
    )
    assert [c for (c,) in columns if "workspace" in c] == ["workspace"]  # one spelling


def test_a_workspace_without_its_key_fails_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workspace whose key variable is unset is a ConfigError naming it, nothing sent."""
    monkeypatch.setenv("ACME_SALESHANDY_KEY", ACME)
    monkeypatch.delenv("GLOBEX_SALESHANDY_KEY", raising=False)
    with simulator(seed=12, team_size=14, api_keys=(ACME, GLOBEX)) as sim:
        with pytest.raises(ConfigError, match="GLOBEX_SALESHANDY_KEY"):
            team_stats_source(config=workspaces_config(tmp_path, sim))
        assert sim.stats.requests == 0


def test_with_workspaces_an_incomplete_run_raises_naming_the_missing_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the workspaces' router, a page out of retries is fetcher's error, not a group."""
    monkeypatch.setenv("ACME_SALESHANDY_KEY", ACME)
    monkeypatch.setenv("GLOBEX_SALESHANDY_KEY", GLOBEX)
    with simulator(
        seed=12, team_size=14, api_keys=(ACME, GLOBEX), fail_pages=frozenset({3})
    ) as sim:
        config = workspaces_config(tmp_path, sim)
        with pytest.raises(PipelineStepFailed) as failed:
            pipeline(tmp_path).run(team_stats_source(config=config, max_attempts=2))
    cause = failed.value.__cause__
    while cause is not None and not isinstance(cause, IncompleteExtractError):
        cause = cause.__cause__
    assert isinstance(cause, IncompleteExtractError), failed.value
    assert sorted(f.page for f in cause.summary.failed_pages) == [3, 3]  # one per workspace
