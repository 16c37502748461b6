"""A faithful local stand-in for Saleshandy's ``POST /v1/analytics/team/stats``.

Used by the demo, the integration tests and the benchmarks, on a real local port::

    async with serve(SimulatorConfig(team_size=200, fault_rate=0.05)) as sim:
        ...  # point fetcher at sim.base_url with the key "sim-key"
        assert sim.stats.pages_fetched_twice() == []

What it implements, and the choices where the vendor documents nothing
(``/work/shared/api/KNOWN.md`` is the evidence):

Checks, in order
    1. **Auth**: ``x-api-key`` must be one of ``api_keys``, else HTTP 400
       ``{"type": "auth", "message": "Invalid token"}`` (not 401, as the vendor does).
       Auth failures carry no rate-limit headers: there is no valid key whose quota
       they could describe.
    2. **Rate limit** (when ``rate_limit`` is set): ``rate_limit`` hits per
       ``rate_window_s`` per API key. Every later response carries
       ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset``
       (written as ``reset_format`` says). Over the limit: 429 ``ThrottlerException:
       Too Many Requests`` (or, with ``rate_limit_status=400``, 400 ``Rate Limit
       exceeded, ...``) with ``retry-after`` unless ``rate_retry_after=False``. By
       default a window opens with the first request after the previous one expired,
       hits count on arrival and refused requests do not consume quota (NestJS's
       throttler). Switches model other throttlers: ``rate_window_mode`` (windows
       ``"aligned"`` on the wall clock at ``rate_window_phase_s``, or a ``"sliding"``
       log), ``rate_count_on="answer"`` (the hit counts when the answer is sent, so
       requests in flight are not seen by the check), ``rate_count_refused`` (refusals
       count too), and ``foreign_share`` (another client on the first key spends that
       share of its budget, evenly spaced, for the life of the server). The stats'
       ``"rate"`` object says what the limit did, ``max_in_window`` (the key's most
       counted hits in one window) and ``max_arrived_in_window`` (the most admitted
       requests that arrived in one: what the client sent) included.
    3. **Validation**: all nine fields required, unknown ones rejected, strict types
       (``limit``/``page`` must be JSON integers), aware ISO 8601 dates, ``orderBy`` a
       metric of ``type``. HTTP 400 ``{"statusCode": 400, "message": ..., "error":
       "Bad Request"}``; the message names every offending field.
    4. **Faults**: drawn by hashing ``(seed, query, page, attempt)``, so a run
       reproduces regardless of arrival order; ``fail_pages`` always answer 500.
    5. **Latency** (``latency_ms`` plus seeded jitter) applies to every answer, errors
       included, as the network would.

Rows
    One row per team member named in ``userIds``: ``userId``, ``firstName``,
    ``lastName``, ``email`` and one integer count per metric of the report type.
    **Unknown user ids are silently ignored** and duplicates collapse, as an SQL
    ``IN`` filter would. Rows sort by ``orderBy`` in ``sortOrder`` with ties broken
    by ``userId`` ascending in both directions. Counts are deterministic, never
    exceed their funnel parent and are additive over adjacent windows (see
    ``_report``).

Envelopes (``envelope``)
    ``"data"``: ``{"message", "payload": {"data": [...], "meta": {...}}}``;
    ``"items"``: ``payload.items``; ``"named"``: ``payload.teamStats``;
    ``"nested"``: ``payload.payload``; ``"array"``: ``payload`` is the bare row list
    and there is **no meta**. Meta is ``totalItems``, ``itemCount``, ``itemsPerPage``,
    ``totalPages`` (0 for no rows) and ``currentPage``; a page past the end is an
    empty list with meta. ``string_counts`` renders counts and meta numbers as strings.

Other endpoints
    ``GET /v1/user/team-member-list`` (auth and rate limit apply, no faults) lists
    the whole team. ``GET /_simulator/stats`` returns :meth:`SimulatorStats.snapshot`
    (``?events=1`` adds every event) and ``POST /_simulator/reset`` zeroes the stats,
    the fault attempt counters and the rate-limit windows (a foreign client keeps
    running); neither needs auth.
"""

from fetcher.simulator._app import RunningSimulator, create_app, serve
from fetcher.simulator._config import FAULT_KINDS, FaultKind, SimulatorConfig
from fetcher.simulator._stats import RequestEvent, SimulatorStats
from fetcher.simulator._team import Member, build_team

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "Member",
    "RequestEvent",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorStats",
    "build_team",
    "create_app",
    "serve",
]
