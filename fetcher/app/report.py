"""The run report (``--report PATH``): a typed, checked file, written whole or not at all.

:class:`RunReport` is the report's schema: what
:meth:`fetcher.run.pool.RunSummary.to_dict` says of the run, plus what the job
adds (the output, the window, the catch-up position) and the version of
fetcher that wrote it. A report is checked when written (a field that
drifted from the schema is a bug, caught by the tests) and when read back
with :meth:`RunReport.load`, which scripts that watch a nightly job can use:
a torn or hand-edited report is refused with the field that is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from fetcher._version import __version__
from fetcher.errors import ConfigError
from fetcher.files import write_atomically
from fetcher.run.pool import FailedPage, IncompleteQuery, QueryResult, RunSummary

__all__ = ["RunReport", "write_report"]


# The report's entries are the run's own dataclasses (pydantic validates them as
# fields, with this model's strictness), so their fields are written down once.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Resumed(_Strict):
    """What an earlier, interrupted run had already written."""

    pages: int
    records: int


class RateLimitUse(_Strict):
    """How the rate limit was met."""

    refusals: int
    waits: int
    wait_s: float


class RunReport(_Strict):
    """The JSON run report; the field names are a public contract (scripts read them)."""

    status: Literal["ok", "incomplete", "failed"]
    pages: int
    records: int
    requests: int
    retries: int
    duration_s: float
    queries: int
    failed_pages: list[FailedPage]
    failed_queries: list[str]
    discarded_pages: int
    resumed: Resumed
    duplicates_dropped: int
    repair_requests: int
    incomplete_queries: list[IncompleteQuery]
    shape: dict[str, Any]
    rate_limit: RateLimitUse
    error: str | None
    error_type: str | None
    started_at: str
    finished_at: str
    query_results: list[QueryResult]
    fetcher_version: str
    # What the job adds (absent from a report of the library's export()).
    output: str | None = None
    state: str | None = None
    window: list[str] | None = None
    slices: int | None = None
    types: list[str] | None = None
    user_batches: int | None = None
    workspaces: list[str] | None = None
    catch_up_after: str | None = None
    completed_through: str | None = None

    @classmethod
    def of(cls, summary: RunSummary, **details: Any) -> Self:
        """The report of a run, with the job's ``details``."""
        data = {**summary.to_dict(), **details, "fetcher_version": __version__}
        return cls.model_validate(data, strict=False)

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read and check a report.

        Raises:
            ConfigError: the file is missing, not JSON, or a field is wrong (named).
        """
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read the run report {path}: {exc.strerror}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise ConfigError(
                f"the run report {path} is not one fetcher wrote: {where}: {first['msg']}; "
                "run the export again with --report to write a new one"
            ) from exc

    def write(self, path: Path) -> None:
        """Write the report atomically (a reader never sees half a report)."""
        write_atomically(path, (self.model_dump_json(indent=2) + "\n").encode())


def write_report(path: Path, summary: RunSummary, **details: Any) -> None:
    """Write the report of ``summary`` to ``path``, whole or not at all."""
    RunReport.of(summary, **details).write(path)
