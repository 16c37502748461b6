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
will be fetched again) and append from there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import anyio
import orjson
import structlog

from fetcher.errors import SinkError
from fetcher.sinks._common import partial_path, provenance, replace_atomically

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = ["JsonlSink"]

log = structlog.get_logger("fetcher.sinks.jsonl")


def encode_page(page: Page) -> bytes:
    """Encode a page's records as JSON lines, provenance fields appended."""
    # Splice the page's provenance (encoded once) into each encoded record:
    # much cheaper than building a merged dict per record.
    tail = b"," + orjson.dumps(provenance(page))[1:]
    dumps = orjson.dumps
    lines = []
    for record in page.records:
        encoded = dumps(record)
        lines.append(encoded[:-1] + tail if len(encoded) > 2 else b"{" + tail[1:])
    if not lines:
        return b""
    return b"\n".join(lines) + b"\n"


class JsonlSink:
    """Writes every record as one JSON line to ``path``.

    Args:
        path: the output file; written as ``path.partial`` until the run completes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self._file: IO[bytes] | None = None
        self._resume_at: int | None = None
        self.records = 0

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"

    def resume_from(self, token: Mapping[str, Any]) -> None:
        """Continue an interrupted run's file from its last checkpoint.

        Raises:
            SinkError: when ``NAME.partial`` is gone or shorter than the checkpoint.
        """
        offset = token.get("offset")
        if not isinstance(offset, int) or offset < 0:
            raise SinkError(f"checkpoint {dict(token)!r} has no valid offset")
        try:
            size = self.partial.stat().st_size
        except OSError:
            raise SinkError(f"cannot resume: {self.partial} is missing") from None
        if size < offset:
            raise SinkError(
                f"cannot resume: {self.partial} has {size} bytes, the checkpoint {offset}"
            )
        self._resume_at = offset

    async def __aenter__(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._resume_at is None:
                self._file = self.partial.open("wb")
            else:
                self._file = self.partial.open("r+b")
                self._file.truncate(self._resume_at)
                self._file.seek(self._resume_at)
        except OSError as exc:
            raise SinkError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc
        self.records = 0
        return self

    async def checkpoint(self) -> dict[str, Any]:
        """Sync what is written; the token is the file's length."""
        assert self._file is not None, "use the sink as an async context manager"
        return {"offset": await anyio.to_thread.run_sync(self._sync, self._file)}

    @staticmethod
    def _sync(file: IO[bytes]) -> int:
        file.flush()
        os.fsync(file.fileno())
        return file.tell()

    async def write(self, page: Page) -> None:
        """Append the page's records and flush them to the operating system."""
        assert self._file is not None, "use the sink as an async context manager"
        data = encode_page(page)
        await anyio.to_thread.run_sync(self._write, data)
        self.records += len(page.records)

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._file.flush()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        if exc_type is not None:
            file.close()
            log.warning("output.incomplete", path=str(self.partial), records=self.records)
            return
        await anyio.to_thread.run_sync(self._finish, file)
        log.info("output.complete", path=str(self.path), records=self.records)

    def _finish(self, file: IO[bytes]) -> None:
        with file:
            file.flush()
            os.fsync(file.fileno())
        replace_atomically(self.partial, self.path)
