"""[[workspaces]]: many keys in one config and one process, a limiter per key, rows keyed by it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pytest

from fetcher.app.settings import load_settings, resolve_workspace_key
from fetcher.errors import ConfigError
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from fetcher.sinks._schema import COLUMNS, KEY_COLUMNS, PLAIN_SCHEMA, WORKSPACE_SCHEMA
from fetcher.spec import QuerySpec
from tests.integration import assert_same_rows, read_jsonl

KEY_A = "key-acme-0123456789"
KEY_B = "key-globex-9876543210"
KEY_C = "key-initech-5555555555"


async def run_fetcher(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m fetcher ARGS` with only the given FETCHER_/SALESHANDY_/key variables."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FETCHER_", "SALESHANDY_", "ACME_", "GLOBEX_", "INITECH_"))
    }
    result = await anyio.run_process(
        [sys.executable, "-m", "fetcher", *args], env={**base, **env}, check=False
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def write_config(path: Path, shared: str, *workspaces: str) -> Path:
    path.write_text(shared + "".join(f"\n[[workspaces]]\n{w}\n" for w in workspaces))
    return path


def env_key_tables(acme: RunningSimulator, globex: RunningSimulator) -> tuple[str, str]:
    """The two workspace tables, keys in ACME_KEY and GLOBEX_KEY, each on its own server."""
    return (
        f'name = "acme"\napi_key_env = "ACME_KEY"\nbase_url = "{acme.base_url}"',
        f'name = "globex"\napi_key_env = "GLOBEX_KEY"\nbase_url = "{globex.base_url}"',
    )


SHARED = """
start = "2024-01-01"
end = "2024-01-02"
slice = "day"
type = ["prospect", "email"]
page_size = 7
log_level = "warning"
"""


def expected_by_query(sim: RunningSimulator, specs: list[QuerySpec]) -> dict[str, list[Any]]:
    return {spec.key: sim.expected_rows(spec.body(1)) for spec in specs}


# --- settings -----------------------------------------------------------------------------------


def test_workspaces_load_with_their_own_key_url_users_and_rate(tmp_path: Path) -> None:
    users = tmp_path / "globex.txt"
    users.write_text("u1\nu2\n")
    config = write_config(
        tmp_path / "job.toml",
        SHARED + 'base_url = "https://open-api.saleshandy.com"\nusers = ["x", "y"]\n',
        'name = "acme"\napi_key_env = "ACME_SALESHANDY_KEY"\nrate_limit = "30/min"',
        f'name = "globex"\napi_key_file = "{tmp_path / "g.key"}"\n'
        f'users_file = "{users}"\nbase_url = "https://leo-open-api-gateway.saleshandy.com/"',
    )
    settings = load_settings({}, config_file=config)
    assert settings.workspaces is not None
    acme, globex = (settings.for_workspace(w) for w in settings.workspaces)
    assert (acme.base_url, acme.users, acme.rate_limit) == (
        "https://open-api.saleshandy.com",
        ["x", "y"],
        "30/min",
    )
    assert acme.workspaces is None and acme.api_key_file is None
    assert globex.base_url == "https://leo-open-api-gateway.saleshandy.com"
    assert (globex.users, globex.user_ids(), globex.rate_limit) == (None, ["u1", "u2"], None)
    assert globex.api_key_file == tmp_path / "g.key"
    # The shared settings are everyone's.
    assert {s.page_size for s in (acme, globex)} == {7}
    specs = acme.queries(acme.user_ids(), workspace="acme")
    assert {s.workspace for s in specs} == {"acme"}
    assert all(s.key.startswith("acme/") for s in specs)


@pytest.mark.parametrize(
    ("tables", "field", "says"),
    [
        (
            ['name = "a"\napi_key_env = "A_KEY"', 'name = "a"\napi_key_env = "B_KEY"'],
            "workspaces",
            "two workspaces are named 'a'",
        ),
        (['name = "a"'], "table #1", "has no key; set api_key_env"),
        (
            ['name = "a"\napi_key_env = "A"\napi_key_file = "k"'],
            "table #1",
            "not both",
        ),
        (['name = "a b"\napi_key_env = "A"'], "key 'name'", "use letters, digits"),
        (['name = "a"\napi_key_env = "sk-live-123"'], "key 'api_key_env'", "it is not the key"),
        (['name = "a"\napi_key_env = "A"\nrate_limit = "fast"'], "key 'rate_limit'", "fast"),
        (
            ['name = "a"\napi_key_env = "A"\nusers = ["u"]\nall_users = true'],
            "table #1",
            "one of users, users_file or all_users",
        ),
        (['name = "a"\napi_key_env = "A"\ncolour = "red"'], "key 'colour'", "unknown setting"),
    ],
)
def test_invalid_workspace_tables_name_the_field_and_the_fix(
    tmp_path: Path, tables: list[str], field: str, says: str
) -> None:
    config = write_config(tmp_path / "job.toml", SHARED, *tables)
    with pytest.raises(ConfigError) as caught:
        load_settings({}, config_file=config)
    assert field in str(caught.value.field) or field in str(caught.value)
    assert says in str(caught.value)


def test_a_key_written_into_a_workspace_table_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path / "job.toml", SHARED, f'name = "a"\napi_key = "{KEY_A}"')
    with pytest.raises(ConfigError, match="must not be written into the config") as caught:
        load_settings({}, config_file=config)
    assert KEY_A not in str(caught.value)


def test_workspace_key_comes_from_its_variable_or_file(tmp_path: Path) -> None:
    key_file = tmp_path / "b.key"
    key_file.write_text(KEY_B + "\n")
    key_file.chmod(0o600)
    config = write_config(
        tmp_path / "job.toml",
        SHARED,
        'name = "a"\napi_key_env = "ACME_KEY"',
        f'name = "b"\napi_key_file = "{key_file}"',
        f'name = "c"\napi_key_file = "{tmp_path / "missing.key"}"',
    )
    settings = load_settings({}, config_file=config)
    assert settings.workspaces is not None
    a, b, c = settings.workspaces
    assert resolve_workspace_key(a, env={"ACME_KEY": KEY_A}).get_secret_value() == KEY_A
    assert resolve_workspace_key(b, env={}).get_secret_value() == KEY_B
    with pytest.raises(ConfigError, match=r"ACME_KEY .* is not set") as unset:
        resolve_workspace_key(a, env={"SALESHANDY_API_KEY": KEY_C})
    assert unset.value.field == "workspaces[a].api_key_env"
    with pytest.raises(ConfigError, match="cannot read the key file") as unreadable:
        resolve_workspace_key(c, env={})
    assert unreadable.value.field == "workspaces[c].api_key_file"


def test_without_workspaces_the_schema_and_query_keys_are_unchanged() -> None:
    """No [[workspaces]]: the same columns, the same key, the same query keys as before."""
    assert PLAIN_SCHEMA.columns == COLUMNS and PLAIN_SCHEMA.key == KEY_COLUMNS
    assert WORKSPACE_SCHEMA.columns == ("workspace", *COLUMNS)
    assert WORKSPACE_SCHEMA.key == ("workspace", *KEY_COLUMNS)
    assert WORKSPACE_SCHEMA.schema_id != PLAIN_SCHEMA.schema_id
    spec = QuerySpec(
        user_ids=("u1", "u2"),
        start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=dt.UTC),
        type="email",
    )
    # The key this query had before workspaces existed (computed on the parent commit):
    # state files of earlier runs still resume.
    assert spec.key == "email:2024-01-01..2024-01-01:2a6a61d18e91"
    in_acme = spec.model_copy(update={"workspace": "acme"})
    assert in_acme.key.startswith("acme/email:2024-01-01..2024-01-01:")
    assert in_acme.key != spec.key
    assert "workspace" not in spec.body(1) and "workspace" not in in_acme.body(1)


# --- one process, many keys ---------------------------------------------------------------------


async def test_export_runs_every_workspace_into_one_table_each_row_once(tmp_path: Path) -> None:
    """Two workspaces on two servers (own URLs, teams and keys): exact rows per workspace."""
    key_file = tmp_path / "globex.key"
    key_file.write_text(KEY_B)
    key_file.chmod(0o600)
    async with (
        serve(SimulatorConfig(seed=1, team_size=23, api_keys=(KEY_A,))) as acme_sim,
        serve(SimulatorConfig(seed=2, team_size=17, api_keys=(KEY_B,))) as globex_sim,
    ):
        out = tmp_path / "stats.duckdb"
        config = write_config(
            tmp_path / "job.toml",
            SHARED + f'all_users = true\nout = "{out}"\n',
            f'name = "acme"\napi_key_env = "ACME_SALESHANDY_KEY"\nbase_url = "{acme_sim.base_url}"',
            f'name = "globex"\napi_key_file = "{key_file}"\nbase_url = "{globex_sim.base_url}"',
        )
        result = await run_fetcher(
            ["export", "--config", str(config)], {"ACME_SALESHANDY_KEY": KEY_A}
        )
        assert result.returncode == 0, result.stderr
        settings = load_settings({}, config_file=config)
        assert settings.workspaces is not None
        with duckdb.connect(str(out), read_only=True) as db:
            columns = [row[0] for row in db.execute("DESCRIBE team_stats").fetchall()]
            assert columns == ["workspace", *COLUMNS]
            for workspace, sim in (("acme", acme_sim), ("globex", globex_sim)):
                scope = settings.for_workspace(settings.workspace(workspace))
                for spec in scope.queries(sim.user_ids, workspace=workspace):
                    got = db.execute(
                        "SELECT user_id FROM team_stats WHERE workspace = ? AND type = ? "
                        "AND window_start = ?",
                        [workspace, spec.type, spec.start],
                    ).fetchall()
                    want = [row["userId"] for row in sim.expected_rows(spec.body(1))]
                    assert sorted(u for (u,) in got) == sorted(want)
            total = db.execute("SELECT count(*) FROM team_stats").fetchone()
            assert total == ((23 + 17) * 2 * 2,)
        # Each key went to its own server only, and neither key was ever printed.
        assert acme_sim.stats.requests > 0 and globex_sim.stats.requests > 0
        for text in (result.stdout, result.stderr, config.read_text()):
            assert KEY_A not in text and KEY_B not in text


async def test_same_team_in_two_workspaces_keeps_both_rows(tmp_path: Path) -> None:
    """One server, two keys, the same users: the workspace is what tells the rows apart."""
    async with serve(SimulatorConfig(seed=4, team_size=12, api_keys=(KEY_A, KEY_B))) as sim:
        csv_out, jsonl_out = tmp_path / "stats.csv", tmp_path / "stats.jsonl"
        db_out = tmp_path / "stats.duckdb"
        tables = (
            f'name = "acme"\napi_key_env = "ACME_KEY"\nbase_url = "{sim.base_url}"',
            f'name = "globex"\napi_key_env = "GLOBEX_KEY"\nbase_url = "{sim.base_url}"',
        )
        env = {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}
        for out in (csv_out, jsonl_out, db_out):
            config = write_config(tmp_path / "job.toml", SHARED + "all_users = true\n", *tables)
            result = await run_fetcher(["export", "--config", str(config), "--out", str(out)], env)
            assert result.returncode == 0, result.stderr
        header = csv_out.read_text().splitlines()[0]
        assert header.split(",") == ["workspace", *COLUMNS]
        rows = csv_out.read_text().splitlines()[1:]
        assert len(rows) == 2 * 12 * 2 * 2
        # The upsert keys on the workspace too: the same user's row in each survives.
        with duckdb.connect(str(db_out), read_only=True) as db:
            counts = db.execute(
                "SELECT workspace, count(*) FROM team_stats GROUP BY ALL ORDER BY 1"
            ).fetchall()
        assert counts == [("acme", 12 * 2 * 2), ("globex", 12 * 2 * 2)]
        records = read_jsonl(jsonl_out)
        assert list(records[0])[len(records[0]) - 8] == "_workspace"
        for workspace in ("acme", "globex"):
            mine = [r for r in records if r["_workspace"] == workspace]
            assert {r["_query"].split("/")[0] for r in mine} == {workspace}
            settings = load_settings({}, config_file=tmp_path / "job.toml")
            scope = settings.for_workspace(settings.workspace(workspace))
            for spec in scope.queries(sim.user_ids, workspace=workspace):
                assert_same_rows(
                    [r for r in mine if r["_query"] == spec.key],
                    sim.expected_rows(spec.body(1)),
                )


async def test_each_key_keeps_its_own_limit_in_one_process(tmp_path: Path) -> None:
    """Three keys with their own limits on one server: each used, none over its window."""
    limits = (3, 5, 8)
    config_sim = SimulatorConfig(
        seed=5,
        team_size=20,
        api_keys=(KEY_A, KEY_B, KEY_C),
        rate_limit=8,
        key_rate_limits=limits,
        rate_window_s=1.0,
    )
    async with serve(config_sim) as sim:
        tables = [
            f'name = "{name}"\napi_key_env = "{var}"\nbase_url = "{sim.base_url}"'
            for name, var in (("acme", "ACME_K"), ("globex", "GLOBEX_K"), ("initech", "INITECH_K"))
        ]
        config = write_config(
            tmp_path / "job.toml",
            SHARED.replace('["prospect", "email"]', '["prospect"]') + "all_users = true\n",
            *tables,
        )
        env = {"ACME_K": KEY_A, "GLOBEX_K": KEY_B, "INITECH_K": KEY_C}
        result = await run_fetcher(
            ["export", "--config", str(config), "--out", str(tmp_path / "s.jsonl")], env
        )
        assert result.returncode == 0, result.stderr
        per_key = sim.stats.snapshot()["rate"]["keys"]
        assert [k["limit"] for k in per_key] == list(limits)
        for key in per_key:
            assert 0 < key["max_in_window"] <= key["limit"], per_key
        assert sim.stats.snapshot()["rate"]["refused"] == 0
        assert len(read_jsonl(tmp_path / "s.jsonl")) == 3 * 20 * 2


async def test_missing_workspace_variable_fails_before_any_request(tmp_path: Path) -> None:
    async with serve(SimulatorConfig(seed=1, team_size=5, api_keys=(KEY_A, KEY_B))) as sim:
        config = write_config(
            tmp_path / "job.toml",
            SHARED + f'all_users = true\nout = "{tmp_path / "s.jsonl"}"\n',
            f'name = "acme"\napi_key_env = "ACME_KEY"\nbase_url = "{sim.base_url}"',
            f'name = "globex"\napi_key_env = "GLOBEX_KEY"\nbase_url = "{sim.base_url}"',
        )
        result = await run_fetcher(["export", "--config", str(config)], {"ACME_KEY": KEY_A})
        assert result.returncode == 2, result.stderr
        assert "workspaces[globex].api_key_env" in result.stderr
        assert "GLOBEX_KEY" in result.stderr and "export GLOBEX_KEY=" in result.stderr
        assert KEY_A not in result.stderr + result.stdout
        assert sim.stats.requests == 0


async def test_plan_gives_each_workspace_and_the_workers_the_job_can_use(tmp_path: Path) -> None:
    async with (
        serve(SimulatorConfig(seed=1, team_size=23, api_keys=(KEY_A,))) as acme_sim,
        serve(SimulatorConfig(seed=2, team_size=17, api_keys=(KEY_B,))) as globex_sim,
    ):
        config = write_config(
            tmp_path / "job.toml",
            SHARED + "all_users = true\n",
            *env_key_tables(acme_sim, globex_sim),
        )
        env = {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}
        result = await run_fetcher(["plan", "--config", str(config), "--json"], env)
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert set(plan["workspaces"]) == {"acme", "globex"}
        # 2 days x 2 types per workspace; pages exact from each server's page 1
        assert plan["units"] == 8 and plan["useful_workers"] == 2
        assert plan["workspaces"]["acme"]["pages"] == 2 * 2 * 4  # 23 users / 7 per page
        assert plan["workspaces"]["globex"]["pages"] == 2 * 2 * 3
        text = await run_fetcher(["plan", "--config", str(config)], env)
        assert "workspace acme:" in text.stdout and "workspace globex:" in text.stdout
        assert "at most 2 worker thread(s) at once are useful" in text.stdout
        missing = await run_fetcher(["plan", "--config", str(config)], {"ACME_KEY": KEY_A})
        assert missing.returncode == 2 and "workspaces[globex].api_key_env" in missing.stderr
        assert KEY_A not in text.stdout + text.stderr + missing.stderr


async def test_plan_catch_up_with_workspaces_starts_where_the_export_left_off(
    tmp_path: Path,
) -> None:
    """`fetcher plan --catch-up` plans what the next `fetcher export` of the job fetches.

    The export keeps one catch-up position for the whole job (all workspaces
    together); the plan looked each workspace up under its own identity, found
    nothing, and planned the whole window again.
    """
    async with (
        serve(SimulatorConfig(seed=1, team_size=9, api_keys=(KEY_A,))) as acme_sim,
        serve(SimulatorConfig(seed=2, team_size=5, api_keys=(KEY_B,))) as globex_sim,
    ):
        out = tmp_path / "stats.jsonl"

        def config(end: str) -> Path:
            return write_config(
                tmp_path / "job.toml",
                f'start = "2024-01-01"\nend = "{end}"\nslice = "day"\ntype = "prospect"\n'
                f'all_users = true\ncatch_up = true\nout = "{out}"\nlog_level = "warning"\n',
                *env_key_tables(acme_sim, globex_sim),
            )

        env = {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}
        first = await run_fetcher(["export", "--config", str(config("2024-01-03"))], env)
        assert first.returncode == 0, first.stderr
        result = await run_fetcher(
            ["plan", "--config", str(config("2024-01-05")), "--json", "--no-probe"], env
        )
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        for name in ("acme", "globex"):
            workspace = plan["workspaces"][name]
            assert workspace["catch_up_after"].startswith("2024-01-03T23:59:59.999"), workspace
            assert workspace["window"][0].startswith("2024-01-04T00:00:00.000"), workspace
        assert plan["units"] == 2 * 2  # two new days, one type, in each workspace


async def test_check_tries_every_workspace_with_its_own_key_and_url(tmp_path: Path) -> None:
    """`fetcher check --config` with workspaces: one line per workspace, exit 3 for a bad key."""
    async with (
        serve(SimulatorConfig(seed=1, team_size=4, api_keys=(KEY_A,))) as acme_sim,
        serve(SimulatorConfig(seed=2, team_size=3, api_keys=(KEY_B,))) as globex_sim,
    ):
        config = write_config(
            tmp_path / "job.toml",
            SHARED + "all_users = true\n",
            *env_key_tables(acme_sim, globex_sim),
        )
        good = await run_fetcher(
            ["check", "--config", str(config)], {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_B}
        )
        assert good.returncode == 0, good.stderr
        assert "[acme] OK: " in good.stdout and "[globex] OK: " in good.stdout
        assert acme_sim.base_url in good.stdout and globex_sim.base_url in good.stdout
        bad = await run_fetcher(
            ["check", "--config", str(config)], {"ACME_KEY": KEY_A, "GLOBEX_KEY": KEY_C}
        )
        assert bad.returncode == 3, bad.stderr
        assert "[acme] OK: " in bad.stdout
        assert "[globex] bad key: " in bad.stderr
        acme_sim.stats.reset()
        missing = await run_fetcher(["check", "--config", str(config)], {"ACME_KEY": KEY_A})
        assert missing.returncode == 2 and "workspaces[globex].api_key_env" in missing.stderr
        assert acme_sim.stats.requests == 0  # every key is found before any request
        for result in (good, bad, missing):
            for key in (KEY_A, KEY_B, KEY_C):
                assert key not in result.stdout + result.stderr
