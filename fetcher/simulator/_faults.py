"""Which request gets which fault, decided by hashing, never by arrival order.

The decision for the *n*-th served request of a page (``n`` counts requests of
that query and page that got past auth, rate limit and validation) is a pure
function of ``(seed, query key, page, n)``. So a run reproduces exactly: page 7's
second attempt fails the same way whether it arrives first or last, whatever
the concurrency.
"""

from __future__ import annotations

from fetcher.simulator._config import FaultKind, SimulatorConfig
from fetcher.simulator._team import stable_unit

__all__ = ["choose_fault"]


def choose_fault(
    config: SimulatorConfig, query_key: str, page: int, attempt: int
) -> FaultKind | None:
    """The fault to inject instead of the answer, or ``None`` to answer normally.

    Args:
        config: supplies the seed, ``fault_rate``, ``fault_kinds`` and ``fail_pages``.
        query_key: identifies the request body minus its page.
        page: the requested page.
        attempt: how many requests for this query and page were served before (0-based).
    """
    if page in config.fail_pages:
        return "500"
    if config.fault_rate <= 0.0:
        return None
    if stable_unit(config.seed, "fault", query_key, page, attempt) >= config.fault_rate:
        return None
    kinds = config.fault_kinds
    pick = stable_unit(config.seed, "fault-kind", query_key, page, attempt)
    return kinds[int(pick * len(kinds))]
