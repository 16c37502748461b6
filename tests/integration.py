"""Helpers for integration tests against the simulator on a real local port."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from fetcher.simulator import RunningSimulator
from fetcher.spec import QuerySpec

KEY = "sim-key"
JAN_START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
JAN_END = dt.datetime(2024, 1, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)


def spec_for(sim: RunningSimulator, **overrides: Any) -> QuerySpec:
    """A query over the simulator's whole team (overridable)."""
    fields: dict[str, Any] = {
        "user_ids": tuple(sim.user_ids),
        "start": JAN_START,
        "end": JAN_END,
        "type": "prospect",
        "page_size": 10,
    }
    fields.update(overrides)
    return QuerySpec(**fields)


def api_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the provenance fields fetcher adds (they start with `_`)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def assert_same_rows(got: Iterable[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Exactly the expected rows: none missing, none duplicated, none different."""
    rows = [api_fields(r) for r in got]
    ids = Counter(r["userId"] for r in rows)
    duplicates = [user for user, n in ids.items() if n > 1]
    assert not duplicates, f"duplicated users: {duplicates[:5]}"
    by_id = {r["userId"]: r for r in rows}
    want = {r["userId"]: r for r in expected}
    missing = sorted(set(want) - set(by_id))
    extra = sorted(set(by_id) - set(want))
    assert not missing, f"{len(missing)} missing users, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected users, e.g. {extra[:5]}"
    wrong = [u for u in want if by_id[u] != want[u]]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {by_id[wrong[0]]} != {want[wrong[0]]}"
