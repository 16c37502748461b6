"""TeeSink: one page stream, several sinks, each keeping its own rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Self

import pytest

from fetcher.errors import SinkError
from fetcher.models import Page
from fetcher.sinks import JsonlSink, MemorySink
from fetcher.sinks.tee import TeeSink
from fetcher.spec import QuerySpec

SPEC = QuerySpec(
    user_ids=("u1", "u2"),
    start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    end=dt.datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=dt.UTC),
    type="prospect",
    page_size=1,
)


def page(number: int) -> Page:
    return Page(query=SPEC, number=number, records=[{"userId": f"u{number}", "prospectAdded": 1}])


class Recording:
    """A sink that logs what happens to it into a shared list."""

    def __init__(self, name: str, log: list[str], *, fail_open: bool = False) -> None:
        self.name, self.log, self.fail_open = name, log, fail_open

    async def __aenter__(self) -> Self:
        if self.fail_open:
            raise SinkError(f"{self.name} cannot open")
        self.log.append(f"{self.name} open")
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.log.append(f"{self.name} exit {'error' if exc_type else 'clean'}")

    async def write(self, page: Page) -> None:
        self.log.append(f"{self.name} write {page.number}")


async def test_every_page_goes_to_every_sink_in_order() -> None:
    """Each page is written to each sink in the order given; both are completed."""
    first, second = MemorySink(), MemorySink()
    async with TeeSink(first, second) as tee:
        await tee.write(page(1))
        await tee.write(page(2))
    assert (
        [r["userId"] for r in first.records]
        == ["u1", "u2"]
        == [r["userId"] for r in second.records]
    )
    assert first.completed and second.completed


async def test_sinks_open_in_order_and_close_in_reverse_with_the_error() -> None:
    """A failed run is passed to every sink's exit, last opened first."""
    log: list[str] = []
    with pytest.raises(RuntimeError):
        async with TeeSink(Recording("a", log), Recording("b", log)) as tee:
            await tee.write(page(1))
            raise RuntimeError("the run failed")
    assert log == ["a open", "b open", "a write 1", "b write 1", "b exit error", "a exit error"]


async def test_a_sink_that_cannot_open_closes_the_ones_already_open() -> None:
    """If the second sink fails to open, the first is closed, as failed, before the error."""
    log: list[str] = []
    with pytest.raises(SinkError, match="b cannot open"):
        async with TeeSink(Recording("a", log), Recording("b", log, fail_open=True)):
            pass
    assert log == ["a open", "a exit error"]


async def test_checkpoint_holds_each_sinks_token_and_resume_hands_them_back(
    tmp_path: Path,
) -> None:
    """The tee's token lists its sinks' tokens; resume_from gives each its own."""
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    tee = TeeSink(JsonlSink(one), JsonlSink(two))
    token: dict[str, Any] = {}
    with pytest.raises(RuntimeError, match="interrupted"):
        async with tee:
            await tee.write(page(1))
            token = await tee.checkpoint()
            await tee.write(page(2))  # after the checkpoint: to be discarded on resume
            raise RuntimeError("interrupted")
    assert len(token["sinks"]) == 2
    resumed = TeeSink(JsonlSink(one), JsonlSink(two))
    resumed.resume_from(token)
    async with resumed:
        await resumed.write(page(2))
    for path in (one, two):
        assert path.read_text().count("\n") == 2  # page 1 kept, page 2 written once


def test_a_token_of_another_shape_is_refused() -> None:
    """resume_from refuses a token that does not hold one part per sink."""
    tee = TeeSink(MemorySink(), MemorySink())
    with pytest.raises(SinkError, match="does not match"):
        tee.resume_from({"sinks": [{}]})


def test_a_tee_needs_a_sink() -> None:
    """TeeSink() with no sink is a mistake caught at once."""
    with pytest.raises(ValueError, match="at least one sink"):
        TeeSink()
