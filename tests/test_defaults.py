"""One source for each default: the settings model, and the help, the README and the library agree.

The defaults live in :mod:`fetcher.defaults`; the settings model, the CLI's help and the
library's signatures read them from there. These tests catch a default restated by hand
somewhere (a help text, the README's option table, a signature) that has drifted.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from fetcher import defaults
from fetcher.app.cli import build_parser
from fetcher.app.settings import ExportSettings
from fetcher.http.client import PageClient
from fetcher.http.retry import RetryPolicy
from fetcher.http.transport import AiohttpTransport
from fetcher.run.paging import DEFAULT_MAX_PAGES
from fetcher.sinks._schema import DEFAULT_TABLE
from fetcher.spec import DEFAULT_PAGE_SIZE

ROOT = Path(__file__).resolve().parent.parent

#: Settings whose default is worked out from others; the README and help say how.
DERIVED = {
    "order_by": "the report type's headline metric",
    "records_path": "detected in the first response",
    "sink": "from --out's extension",
    "state": "OUT.state.json beside --out",
    "api_key_file": "the SALESHANDY_API_KEY variable",
}
#: Settings whose ``None`` default is a choice shown as "none" (no limit, no slicing);
#: other ``None`` defaults are inputs with nothing to show until given (users, dates, out).
NONE_IS_A_DEFAULT = {"rate_limit", "shared_limiter", "slice"}


def shown(name: str, value: Any) -> str:
    """A model default as the help and the README write it."""
    if value is None:
        return "none"
    if name == "max_body_bytes":
        return f"{value // 2**20} MiB"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) or value >= 10 else str(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def model_defaults() -> dict[str, Any]:
    """Each scalar setting's default (booleans are switches: no default to show)."""
    found = {}
    for name, field in ExportSettings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        if isinstance(value, bool) or name in DERIVED:
            continue
        if (value is None and name in NONE_IS_A_DEFAULT) or isinstance(
            value, int | float | str | list
        ):
            found[name] = value
    return found


def export_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    export: argparse.ArgumentParser = sub.choices["export"]
    return export


def export_options() -> set[str]:
    """The settings ``fetcher export`` takes as options (others are config-only)."""
    return {action.dest for action in export_parser()._actions}


def help_defaults() -> dict[str, str]:
    """``dest -> the "(default)"`` at the end of each export option's help."""
    found = {}
    for action in export_parser()._actions:
        match = re.search(r"\(([^()]*)\)\s*$", action.help or "")
        if match:
            found[action.dest] = match.group(1).removeprefix("default: ").split(";")[0].strip()
    return found


def readme_defaults() -> dict[str, str]:
    """``setting -> default cell`` of the README's "Export options" table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Export options", 1)[1].split("\n\n", 2)[1]
    found = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        flags = re.findall(r"`--([a-z-]+)", cells[0])
        # `30`; `console`, `info` (one per flag); none (follows the server); 16 MiB
        codes = re.findall(r"`([^`]*)`", cells[-1]) or [re.sub(r"\s*\(.*\)$", "", cells[-1])]
        for flag, cell in zip(
            flags, codes * len(flags) if len(codes) == 1 else codes, strict=False
        ):
            found[flag.replace("-", "_")] = cell
    return found


def test_the_help_shows_each_default_of_the_settings_model() -> None:
    """Every export option that shows a default in ``--help`` shows the model's."""
    model, helped = model_defaults(), help_defaults()
    compared = {name: helped[name] for name in model if name in helped}
    assert len(compared) >= 15
    assert compared == {name: shown(name, model[name]) for name in compared}


def test_the_readme_option_table_shows_each_default_of_the_settings_model() -> None:
    """The README's option table says the model's default for every option it lists."""
    model, documented = model_defaults(), readme_defaults()
    compared = {name: documented[name] for name in model if name in documented}
    assert len(compared) >= 15
    assert compared == {name: shown(name, model[name]) for name in compared}


def test_every_setting_with_an_option_has_its_default_in_the_help() -> None:
    """A new setting cannot ship with a help text that hides its default."""
    helped, options = help_defaults(), export_options()
    assert "timeout" in options
    missing = sorted((set(model_defaults()) & options) - set(helped))
    assert missing == []


@pytest.mark.parametrize(
    ("setting", "library"),
    [
        ("timeout", inspect.signature(PageClient).parameters["timeout"].default),
        ("timeout", inspect.signature(AiohttpTransport).parameters["timeout"].default),
        ("max_attempts", RetryPolicy().attempts),
        ("max_retry_after", RetryPolicy().max_retry_after_s),
        ("max_pages", DEFAULT_MAX_PAGES),
        ("page_size", DEFAULT_PAGE_SIZE),
        ("table", DEFAULT_TABLE),
        ("max_body_bytes", inspect.signature(PageClient).parameters["max_body_bytes"].default),
        ("concurrency", defaults.CONCURRENCY),
    ],
)
def test_the_library_and_the_settings_share_each_default(setting: str, library: object) -> None:
    """A library user without settings gets the same defaults as the command line."""
    assert ExportSettings.model_fields[setting].get_default() == library
