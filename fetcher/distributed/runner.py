"""Work one unit: page by page, each page's rows and checkpoint in one transaction.

The unit's query runs through the worker pool (:class:`~fetcher.run.pool.Paginator`)
as any export's would, resuming from the ledger's page checkpoints (done pages
are not asked for again; the users they wrote still count for "first answer
wins"). Each page that comes back is written by :meth:`Ledger.write_page`: the
results upsert and the checkpoint commit together, so whatever stops a worker
(SIGKILL included) leaves every page in both or in neither.

A stop request (SIGTERM) is honoured between pages: the page in hand is
committed and the rest of the unit is left for the next delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from fetcher.errors import FetcherError, IncompleteRunError
from fetcher.run.pool import PageStream, Paginator

if TYPE_CHECKING:
    from fetcher.distributed.ledger import Claim, Ledger
    from fetcher.run.router import PageSource
    from fetcher.sinks._schema import TableSchema

__all__ = ["STOP_POLL_S", "UnitIncompleteError", "UnitOutcome", "run_unit"]

#: How often a unit looks whether it was asked to stop.
STOP_POLL_S: Final = 0.1

log = structlog.get_logger("fetcher.distributed.runner")


@dataclass(slots=True)
class UnitOutcome:
    """What one attempt at a unit did."""

    pages: int = 0
    records: int = 0
    requests: int = 0
    stopped: bool = False


async def run_unit(
    job_id: str,
    claim: Claim,
    *,
    client: PageSource,
    ledger: Ledger,
    table: str,
    schema: TableSchema,
    max_pages: int,
    repair_rounds: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> UnitOutcome:
    """Fetch the unit's pages that are not done and write each with its checkpoint.

    Returns:
        What was written; ``stopped`` when a stop request ended it early.

    Raises:
        FetcherError: what stopped the query (a refused key, a page that ran
            out of retries: :class:`UnitIncompleteError`); every page written
            before is committed.
    """
    spec = claim.unit.spec
    paginator = Paginator(
        client,
        [spec],
        max_pages=max_pages,
        resume={spec.key: claim.resume},
        repair_rounds=repair_rounds,
        expected_path=client.shape.records_path,
    )
    plan = paginator.plans_by_key[spec.key]
    outcome = UnitOutcome()

    async def watch_for_stop(scope: anyio.CancelScope) -> None:
        # A flag a signal handler sets on another thread: looked at, not awaited.
        while not should_stop():  # noqa: ASYNC110
            await anyio.sleep(STOP_POLL_S)
        outcome.stopped = True
        scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_for_stop, tg.cancel_scope)
            stream = PageStream.start(tg, paginator, buffer=max(1, client.concurrency))
            async with stream:
                async for page in stream:
                    # The page in hand is committed whole, even when a stop comes meanwhile.
                    with anyio.CancelScope(shield=True):
                        outcome.records += await ledger.write_page(
                            job_id,
                            claim.unit.unit_id,
                            page,
                            table=table,
                            schema=schema,
                            plan=plan,
                            user_id_field=client.shape.user_id_field,
                        )
                    outcome.pages += 0 if page.repair else 1
                    log.info(
                        "unit.page_written",
                        job=job_id,
                        unit=claim.unit.unit_id,
                        page=page.number,
                        records=len(page.records),
                    )
            tg.cancel_scope.cancel()  # the stream is done: stop watching
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
    except IncompleteRunError as exc:
        raise UnitIncompleteError(exc) from None
    outcome.requests = paginator.requests
    return outcome


class UnitIncompleteError(FetcherError):
    """A unit's query ended with pages (or users) missing; the message says which and why."""

    def __init__(self, error: IncompleteRunError) -> None:
        summary = error.summary
        parts = [f"page {p.page}: {p.error}" for p in summary.failed_pages[:5]]
        parts += [f"query {q} failed" for q in summary.failed_queries[:5]]
        parts += [
            f"{(q.expected_users or 0) - q.received_users} user(s) never returned"
            for q in summary.incomplete_queries[:5]
        ]
        super().__init__("unit incomplete: " + ("; ".join(parts) or str(error)))
        self.summary = summary


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that matters in a task group's wrapper (the first fetcher error, if any)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _unwrap(exc)
        if isinstance(exc, IncompleteRunError):
            return UnitIncompleteError(exc)
        if isinstance(exc, FetcherError):
            return exc
    return group.exceptions[0]
