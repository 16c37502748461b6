"""The README's promises: its first two commands, and CI running the same test command."""

import re
import sys
import tomllib
from pathlib import Path

import anyio

from fetcher import DuckDBSink, export
from fetcher.simulator import SimulatorConfig, serve
from tests.integration import KEY, spec_for

ROOT = Path(__file__).resolve().parent.parent


def commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.DOTALL)


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    """The first command installs and runs the demo; the second installs and runs the tests."""
    first, second = commands()[:2]
    assert "pip install" in first and first.rstrip().endswith("fetcher demo")
    assert "pip install" in second and second.rstrip().endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run calls the README's test command, so a missing install step fails CI too."""
    test_command = commands()[1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


async def test_readme_duckdb_one_liner_shows_per_user_totals(tmp_path: Path) -> None:
    """The README's DuckDB query runs against a real export and totals each user once."""
    line = next(
        line
        for block in commands()
        for line in block.splitlines()
        if line.startswith('python -c "import duckdb')
    )
    async with serve(SimulatorConfig(seed=4, team_size=25)) as sim:
        specs = [
            spec_for(
                sim,
                start=spec_for(sim).start.replace(day=d),
                end=spec_for(sim).start.replace(day=d, hour=23),
            )
            for d in (1, 2)
        ]
        summary = await export(
            specs, DuckDBSink(tmp_path / "stats.duckdb"), api_key=KEY, base_url=sim.base_url
        )
        expected = {
            r["userId"]: sum(
                row["prospectAdded"]
                for spec in specs
                for row in sim.expected_rows(spec.body(1))
                if row["userId"] == r["userId"]
            )
            for r in sim.expected_rows(specs[0].body(1))
        }
    assert summary.ok
    code = line.removeprefix("python -c ").strip('"')
    result = await anyio.run_process([sys.executable, "-c", code], cwd=tmp_path)
    table = result.stdout.decode()
    assert "user_id" in table and "added" in table
    top_user = max(expected, key=lambda u: (expected[u], u))
    assert top_user in table
    assert str(expected[top_user]) in table


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_constraints_pin_every_dependency_ci_installs() -> None:
    """constraints.txt pins (==) every runtime, optional and dev dependency CI installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("dev", "parquet", "postgres", "distributed"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    pinned = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pinned[name.lower().replace("_", "-")] = version
    missing = sorted(n.split("[")[0] for n in wanted if n.split("[")[0] not in pinned)
    assert not missing, f"add to constraints.txt: {missing}"
