"""What every sink shares: the provenance fields added to each record, and atomic files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = ["PARTIAL_SUFFIX", "partial_path", "provenance", "replace_atomically"]

#: Files are written under ``NAME.partial`` and renamed to ``NAME`` only when the
#: run completes, so a file named ``NAME`` is always a complete export.
PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """Where the in-progress output for ``path`` lives."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def provenance(page: Page) -> dict[str, Any]:
    """The fields fetcher adds to each record; they all start with ``_``.

    ``_query`` is the query's key, ``_page`` the page number, ``_type`` and
    ``_count_by`` the report settings, ``_window_start``/``_window_end`` the
    query's window as sent, and ``_fetched_at`` when the page arrived (UTC).
    """
    query = page.query
    return {
        "_query": query.key,
        "_page": page.number,
        "_type": query.type,
        "_count_by": query.count_by,
        "_window_start": query.start.isoformat(timespec="milliseconds"),
        "_window_end": query.end.isoformat(timespec="milliseconds"),
        "_fetched_at": page.fetched_at.isoformat(timespec="milliseconds"),
    }


def replace_atomically(source: Path, target: Path) -> None:
    """Rename ``source`` onto ``target`` and make the rename durable."""
    os.replace(source, target)
    try:
        fd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
