"""Start-up loads what a command needs: `--help` and a usage error load no HTTP stack or sink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fetcher

#: Runs the CLI in a fresh interpreter and prints which modules it loaded.
PROBE = """
import json, sys
from fetcher.app.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": int(code), "modules": sorted(sys.modules)}))
"""

#: Libraries that only a run needs (the HTTP stack, the sinks', Redis's), and the extras'.
HEAVY = ("aiohttp", "duckdb", "pyarrow", "asyncpg", "redis", "filelock", "dlt", "dramatiq")


def loaded(*argv: str, cwd: Path) -> tuple[int, set[str]]:
    result = cli_probe(PROBE, cwd, *argv)
    last = result.stdout.strip().splitlines()[-1]
    data = json.loads(last)
    return data["code"], set(data["modules"])


def python_says(code: str) -> str:
    """What a fresh interpreter running ``code`` prints."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def cli_probe(code: str, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter running ``code`` (with ``argv``) in ``cwd``, no settings from the env."""
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
    )


def roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["plan", "--help"],
        ["export", "--help"],
        ["enqueue", "--help"],
        ["worker", "--help"],
        ["status", "--help"],
    ],
)
def test_help_loads_nothing_but_the_parser(tmp_path: Path, argv: list[str]) -> None:
    """`fetcher --help` and a command's help load no settings, logging, HTTP stack or sink."""
    code, modules = loaded(*argv, cwd=tmp_path)
    assert code == 0
    assert not roots(modules) & {*HEAVY, "pydantic", "structlog", "anyio"}
    assert not {
        m for m in modules if m.startswith(("fetcher.sinks", "fetcher.run", "fetcher.http"))
    }


def test_a_usage_error_loads_no_http_stack_sink_or_display(tmp_path: Path) -> None:
    """A bad option is reported (exit 2) before aiohttp, a sink or the progress display loads."""
    code, modules = loaded("export", "--page-size", "0", "--out", "x.jsonl", cwd=tmp_path)
    assert code == 2
    assert not roots(modules) & {*HEAVY, "rich"}
    assert "fetcher.app.progress" not in modules
    assert not {m for m in modules if m.startswith(("fetcher.sinks", "fetcher.run"))}


def test_import_fetcher_loads_names_on_first_use(tmp_path: Path) -> None:
    """`import fetcher` is cheap; a name loads its module when first used, and works."""
    probe = (
        "import sys, fetcher\n"
        "before = 'aiohttp' in sys.modules or 'pydantic' in sys.modules\n"
        "client = fetcher.Client\n"
        "print(before, 'aiohttp' in sys.modules, client.__module__, 'Client' in dir(fetcher))\n"
    )
    assert python_says(probe).split() == ["False", "True", "fetcher.run.client", "True"]
    with pytest.raises(AttributeError, match="no attribute 'Paginator'"):
        _ = fetcher.Paginator


def test_import_fetcher_loads_no_dlt() -> None:
    """No dlt (an optional extra) for `import fetcher`, its names or `fetcher.integrations`."""
    probe = (
        "import sys, fetcher, fetcher.integrations\n"
        "fetcher.Client, fetcher.export, fetcher.DuckDBSink\n"
        "print('dlt' in sys.modules, 'aiohttp' in sys.modules)\n"
    )
    assert python_says(probe).split() == ["False", "True"]


def test_without_dlt_the_integration_says_which_extra_to_install() -> None:
    """Without dlt, importing fetcher.integrations.dlt names `pip install 'fetcher[dlt]'`."""
    probe = (
        "import sys\n"
        "sys.modules['dlt'] = None  # as if not installed\n"
        "try:\n"
        "    import fetcher.integrations.dlt\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name, '|', exc)\n"
    )
    said = python_says(probe)
    assert said.startswith("dlt | ")
    assert "pip install 'fetcher[dlt]'" in said


def test_the_cli_loads_structlog_without_rich_and_leaves_rich_importable(tmp_path: Path) -> None:
    """The CLI's structlog skips rich's tracebacks (it renders plain ones); rich still imports."""
    probe = (
        "import sys\n"
        "from fetcher.app.cli import main\n"
        "code = main(['export', '--page-size', '0', '--out', 'x.jsonl'])\n"
        "import structlog.dev, rich.console\n"
        "print(code, 'rich' in sys.modules, structlog.dev.rich is None, rich.console.Console)\n"
    )
    result = cli_probe(probe, tmp_path)
    assert result.stdout.split()[:3] == ["2", "True", "True"]
    assert "rich.console.Console" in result.stdout


def test_debug_still_shows_a_traceback_without_rich(tmp_path: Path) -> None:
    """With structlog loaded plain, ``--debug`` still prints the traceback of a failure."""
    probe = (
        "import sys\n"
        "from fetcher.app import cli\n"
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('boom')\n"
        "cli._main = boom\n"
        "sys.exit(cli.main(['export', '--out', 'x.jsonl', '--debug']))\n"
    )
    result = cli_probe(probe, tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: boom" in result.stderr


def test_the_collector_pauses_while_a_command_loads_and_is_left_as_found(tmp_path: Path) -> None:
    """No GC while a command loads; on (start-up frozen) while it runs; as found after main()."""
    probe = (
        "import gc, sys\n"
        "from fetcher.app import cli\n"
        "seen = []\n"
        "async def export(*args, **kwargs):\n"
        "    loaded = 'fetcher.run.pool' in sys.modules\n"
        "    seen.append([gc.isenabled(), gc.get_freeze_count() > 0, loaded])\n"
        "    return cli.ExitCode.OK\n"
        "cli.run_export = export\n"
        "code = cli.main(['export', '--out', 'x.jsonl'])\n"
        "print(int(code), seen, gc.isenabled(), gc.get_freeze_count())\n"
        "gc.disable()\n"
        "code = cli.main(['export', '--page-size', '0', '--out', 'x.jsonl'])\n"
        "print(int(code), gc.isenabled(), gc.get_freeze_count())\n"
    )
    result = cli_probe(probe, tmp_path)
    assert result.stdout.splitlines() == ["0 [[True, True, True]] True 0", "2 False 0"]


def test_main_leaves_a_callers_frozen_objects_frozen(tmp_path: Path) -> None:
    """A caller that froze objects itself (a pre-forking server) finds them frozen after main()."""
    probe = (
        "import gc\n"
        "from fetcher.app import cli\n"
        "gc.freeze()\n"
        "before = gc.get_freeze_count()\n"
        "cli.main(['export', '--page-size', '0', '--out', 'x.jsonl'])\n"
        "print(before > 0, gc.get_freeze_count() > 0, gc.isenabled())\n"
    )
    assert cli_probe(probe, tmp_path).stdout.split() == ["True", "True", "True"]
