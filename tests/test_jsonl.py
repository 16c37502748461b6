import datetime as dt
from pathlib import Path

import orjson
import pytest

from fetcher.errors import SinkError
from fetcher.models import Page
from fetcher.sinks import JsonlSink, MemorySink, Sink
from fetcher.sinks.jsonl import encode_page
from fetcher.spec import QuerySpec

SPEC = QuerySpec(
    user_ids=("a", "b"),
    start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    end=dt.datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=dt.UTC),
    type="email",
)
FETCHED = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def page(number: int, records: list[dict[str, object]]) -> Page:
    return Page(SPEC, number, records, fetched_at=FETCHED)


def test_sinks_satisfy_the_protocol() -> None:
    """The bundled sinks are Sinks (runtime-checkable protocol)."""
    assert isinstance(JsonlSink("x.jsonl"), Sink)
    assert isinstance(MemorySink(), Sink)


def test_each_record_is_one_line_with_provenance_after_api_fields() -> None:
    """A line holds the API's fields, then `_`-prefixed provenance fields."""
    lines = encode_page(page(3, [{"userId": "a", "emailSent": 4}, {}])).splitlines()
    first = orjson.loads(lines[0])
    assert list(first)[:2] == ["userId", "emailSent"]
    assert first == {
        "userId": "a",
        "emailSent": 4,
        "_query": SPEC.key,
        "_page": 3,
        "_type": "email",
        "_count_by": "absolute",
        "_window_start": "2024-01-01T00:00:00.000+00:00",
        "_window_end": "2024-01-01T23:59:59.999+00:00",
        "_fetched_at": "2024-01-02T03:04:05.000+00:00",
    }
    assert orjson.loads(lines[1])["_page"] == 3  # an empty record still gets provenance


def test_empty_page_writes_nothing() -> None:
    """A page without records adds no bytes."""
    assert encode_page(page(1, [])) == b""


async def test_file_appears_only_when_the_run_completes(tmp_path: Path) -> None:
    """Lines go to NAME.partial, flushed per page; NAME appears on a clean exit."""
    out = tmp_path / "sub" / "stats.jsonl"
    async with JsonlSink(out) as sink:
        await sink.write(page(1, [{"userId": "a"}]))
        partial = tmp_path / "sub" / "stats.jsonl.partial"
        assert partial.read_bytes().count(b"\n") == 1  # flushed already
        assert not out.exists()
        await sink.write(page(2, [{"userId": "b"}]))
    assert not partial.exists()
    assert out.read_bytes().count(b"\n") == 2


async def test_failed_run_keeps_the_partial_file_and_no_final_file(tmp_path: Path) -> None:
    """On an exception the written pages stay in NAME.partial and NAME is not created."""
    out = tmp_path / "stats.jsonl"
    with pytest.raises(RuntimeError):
        async with JsonlSink(out) as sink:
            await sink.write(page(1, [{"userId": "a"}]))
            raise RuntimeError("run failed")
    assert not out.exists()
    assert (tmp_path / "stats.jsonl.partial").read_bytes().count(b"\n") == 1


async def test_previous_complete_output_survives_a_failed_rerun(tmp_path: Path) -> None:
    """A failed re-run does not touch the last complete file."""
    out = tmp_path / "stats.jsonl"
    out.write_text("previous\n")
    with pytest.raises(RuntimeError):
        async with JsonlSink(out) as sink:
            await sink.write(page(1, [{"userId": "a"}]))
            raise RuntimeError("boom")
    assert out.read_text() == "previous\n"


async def test_unwritable_path_fails_on_enter(tmp_path: Path) -> None:
    """A path that cannot be written fails before anything is fetched."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SinkError, match="cannot write"):
        async with JsonlSink(blocker / "stats.jsonl"):
            pass
