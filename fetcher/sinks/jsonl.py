"""The JSON Lines sink: one record per line, written page by page.

Each line is the record as the API returned it (counts normalised to
integers) followed by provenance fields that start with ``_`` (see
:func:`fetcher.sinks._common.provenance`). Pages are appended to
``NAME.partial`` and flushed as they arrive; only when the run completes is the
file synced and renamed to ``NAME``. A run that fails leaves ``NAME.partial``
(every page written so far, intact) and no ``NAME``, so nothing that looks
complete is ever incomplete. A stale ``NAME.partial`` from an earlier run is
replaced when a new run starts.

Resume: :meth:`JsonlSink.checkpoint` syncs the file and returns its length;
given that token, :meth:`JsonlSink.resume_from` makes the next run truncate
``NAME.partial`` to it (dropping lines written after the checkpoint, which
will be fetched again) and append from there. The file handling is
:class:`fetcher.sinks._common.AppendOnlyFile`, which the CSV and Parquet sinks
share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import structlog

from fetcher.sinks._common import AppendOnlyFile, FileSink, partial_path, provenance

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = ["JsonlSink"]

log = structlog.get_logger("fetcher.sinks.jsonl")


def encode_page(page: Page) -> bytes:
    """Encode a page's records as JSON lines, provenance fields appended."""
    records = page.records
    if not records:
        return b""
    # Splice the page's provenance (encoded once) into each encoded record:
    # much cheaper than building a merged dict per record. Each record loses
    # its closing brace, and the separator brings it back with the provenance.
    tail = b"," + orjson.dumps(provenance(page))[1:] + b"\n"
    if all(records):
        return tail.join([encoded[:-1] for encoded in map(orjson.dumps, records)]) + tail
    # An empty record ({}) must not get a comma before the provenance.
    return b"".join(
        encoded[:-1] + tail if len(encoded) > 2 else b"{" + tail[1:]
        for encoded in map(orjson.dumps, records)
    )


class JsonlSink(FileSink):
    """Writes every record as one JSON line to ``path``.

    Args:
        path: the output file; written as ``path.partial`` until the run completes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self._file = AppendOnlyFile(self.partial, log=log)
        self.records = 0

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"

    def encode(self, page: Page) -> bytes:
        """The page's records as JSON lines (see :func:`encode_page`)."""
        return encode_page(page)
