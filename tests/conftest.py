"""Shared test setup."""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import structlog


class _CompatClientResponse(aiohttp.ClientResponse):
    """A ClientResponse that aioresponses 0.7.9 can build under aiohttp 3.14.

    aiohttp 3.14 made ``stream_writer`` a required argument of ClientResponse;
    aioresponses 0.7.9 (the latest release) does not pass it
    (pnuckowski/aioresponses#289). aioresponses builds responses that were
    never written (``writer=None``), for which aiohttp only reads
    ``stream_writer.output_size``; this supplies a stand-in with size 0.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


_NEEDS_SHIM = "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters


@pytest.fixture(autouse=True)
def _aioresponses_compat(monkeypatch: pytest.MonkeyPatch) -> None:
    if _NEEDS_SHIM:
        monkeypatch.setattr("aioresponses.core.ClientResponse", _CompatClientResponse)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog globally; give every test the defaults back."""
    yield
    structlog.reset_defaults()
