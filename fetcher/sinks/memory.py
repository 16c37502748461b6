"""A sink that keeps pages in a list: for tests and for small library uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = ["MemorySink"]


class MemorySink:
    """Collects every page written to it.

    Attributes:
        pages: the pages, in the order they were written.
        completed: whether the run ended cleanly (the sink exited without an exception).
    """

    def __init__(self) -> None:
        self.pages: list[Page] = []
        self.completed = False

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record of every page, in write order."""
        return [record for page in self.pages for record in page.records]

    async def __aenter__(self) -> Self:
        self.completed = False
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.completed = exc_type is None

    async def write(self, page: Page) -> None:
        """Keep the page."""
        self.pages.append(page)
