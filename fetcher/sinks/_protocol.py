"""The sink protocols, on their own so that sinks can name them without importing the package.

:mod:`fetcher.sinks` re-exports both; see its docstring for what a sink must do.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = ["ResumableSink", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """The sink protocol: an async context manager that writes pages."""

    async def __aenter__(self) -> Any:
        """Open the output; raise here (before any request) if it cannot be written."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Finalise the output on a clean exit; keep it, unfinalised, on an exception."""
        ...

    async def write(self, page: Page) -> None:
        """Write one page. Called from one task at a time, in arrival order."""
        ...


@runtime_checkable
class ResumableSink(Sink, Protocol):
    """A sink whose output can be checkpointed and continued after a crash.

    The runner calls :meth:`checkpoint` now and then and records the pages
    written before it as done, with the token it returns. A later run of the
    same export calls :meth:`resume_from` with that token before entering the
    sink; the sink then discards anything written after the checkpoint (those
    pages are fetched again) and appends after it.
    """

    async def checkpoint(self) -> dict[str, Any]:
        """Make every page written so far durable; return a JSON-able token."""
        ...

    def resume_from(self, token: Mapping[str, Any]) -> None:
        """Continue from ``token`` instead of starting afresh (before ``__aenter__``).

        Raises:
            SinkError: when the output cannot be continued; the run then starts over.
        """
        ...
