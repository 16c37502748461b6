"""A fan-out sink: every page to several sinks, in order (``TeeSink(duckdb, jsonl)``).

The runner still sees one sink, written from one task, so the sinks inside
need no locks either. The tee

* enters its sinks in order, and if one fails to open, closes those already
  open (with the error, so none finalises its output) before raising;
* writes each page to each sink in order; the first sink that fails stops the
  run, as a single sink would;
* exits them in reverse order, passing on the run's exception, so each keeps
  its own rule: a file sink finalises only on a clean exit, a database sink
  keeps its committed pages either way;
* checkpoints by asking every sink for its token (``{"sinks": [t1, t2]}``) and
  resumes by handing each its own token back. It is resumable only if every
  sink inside is.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from fetcher.errors import SinkError

if TYPE_CHECKING:
    from fetcher.models import Page
    from fetcher.sinks._protocol import Sink

__all__ = ["TeeSink"]


class TeeSink:
    """Writes every page to each of ``sinks``, in the order given.

    Args:
        *sinks: the sinks, not yet entered; at least one.

    Raises:
        ValueError: no sink given.
    """

    def __init__(self, *sinks: Sink) -> None:
        if not sinks:
            raise ValueError("TeeSink needs at least one sink")
        self.sinks = sinks
        self._stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"TeeSink({', '.join(map(repr, self.sinks))})"

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            for sink in self.sinks:
                await stack.enter_async_context(sink)
            # Every sink is open: from now on they are closed by __aexit__.
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def write(self, page: Page) -> None:
        """Write ``page`` to each sink in turn."""
        for sink in self.sinks:
            await sink.write(page)

    async def checkpoint(self) -> dict[str, Any]:
        """Checkpoint every sink; the token holds theirs, in order.

        Raises:
            SinkError: a sink inside cannot checkpoint.
        """
        tokens = []
        for sink in self.sinks:
            checkpoint = getattr(sink, "checkpoint", None)
            if checkpoint is None:
                raise SinkError(f"{sink!r} cannot checkpoint, so {self!r} cannot either")
            tokens.append(await checkpoint())
        return {"sinks": tokens}

    def resume_from(self, token: Mapping[str, Any]) -> None:
        """Hand each sink its own part of ``token`` (before ``__aenter__``).

        Raises:
            SinkError: the token is not one of this tee's, or a sink cannot resume.
        """
        tokens = token.get("sinks")
        if not isinstance(tokens, list) or len(tokens) != len(self.sinks):
            raise SinkError(
                f"the checkpoint does not match {self!r} ({len(self.sinks)} sinks); starting over"
            )
        for sink, part in zip(self.sinks, tokens, strict=True):
            resume_from = getattr(sink, "resume_from", None)
            if resume_from is None:
                raise SinkError(f"{sink!r} cannot resume, so {self!r} cannot either")
            resume_from(part)
