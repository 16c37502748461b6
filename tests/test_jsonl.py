import datetime as dt
from pathlib import Path

import orjson
import pytest

from fetcher.errors import SinkError
from fetcher.models import Page
from fetcher.sinks import JsonlSink, MemorySink, Sink
from fetcher.sinks.jsonl import encode_page
from tests import tabular
from tests.integration import read_jsonl

SPEC = tabular.day_query()
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


async def test_resume_truncates_to_the_checkpoint_and_appends(tmp_path: Path) -> None:
    """The token is the synced length; lines written after it are dropped on resume."""
    out = tmp_path / "stats.jsonl"
    token = await tabular.checkpoint_then_fail(
        JsonlSink(out), page(1, [{"userId": "a"}]), page(2, [{"userId": "lost"}])
    )
    assert token == {"offset": len(encode_page(page(1, [{"userId": "a"}])))}
    resumed = JsonlSink(out)
    resumed.resume_from(token)
    async with resumed:
        await resumed.write(page(2, [{"userId": "b"}]))
    assert [line["userId"] for line in read_jsonl(out)] == ["a", "b"]


def test_resume_refuses_a_token_the_partial_file_cannot_honour(tmp_path: Path) -> None:
    """No valid offset, no NAME.partial, or a shorter one: SinkError (the run starts over)."""
    out = tmp_path / "stats.jsonl"
    with pytest.raises(SinkError, match="has no valid offset"):
        JsonlSink(out).resume_from({"offset": -1})
    with pytest.raises(SinkError, match=r"stats\.jsonl\.partial is missing"):
        JsonlSink(out).resume_from({"offset": 0})
    (tmp_path / "stats.jsonl.partial").write_bytes(b"{}\n")
    with pytest.raises(SinkError, match="has 3 bytes, the checkpoint 4"):
        JsonlSink(out).resume_from({"offset": 4})
