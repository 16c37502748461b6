"""The simulator's knobs: one frozen, validated :class:`SimulatorConfig`.

Every behaviour the simulator can vary (team, envelope, count encoding, latency,
rate limiting, faults) is a field here, so a test, demo or benchmark states the
whole server it runs against in one value, and an invalid knob fails before a
port is opened.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from fetcher.spec import MAX_PAGE_SIZE

__all__ = ["FAULT_KINDS", "Envelope", "FaultKind", "ResetFormat", "SimulatorConfig"]

#: A fault the simulator can inject in place of a normal answer:
#:
#: - ``"500"``: HTTP 500 with the vendor's JSON error body.
#: - ``"502"``, ``"503"``, ``"504"``: an HTML error page, as a gateway in front of the API sends.
#: - ``"503-retry-after"``: HTTP 503 carrying ``retry-after: 1``.
#: - ``"reset"``: the connection is closed without any response.
#: - ``"truncated"``: HTTP 200 whose JSON body is cut in half (content-length matches the cut).
#: - ``"stall"``: the answer is held back for ``stall_s`` seconds, then sent normally.
FaultKind = Literal["500", "502", "503", "503-retry-after", "504", "reset", "truncated", "stall"]

#: Every fault kind, in declaration order (the default of ``fault_kinds``).
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)

#: Where the rows sit in a 200 body; KNOWN.md lists all of these across the vendor's endpoints.
Envelope = Literal["data", "items", "array", "nested", "named"]

#: How ``x-ratelimit-reset`` is written: epoch seconds of the window end (with
#: milliseconds, e.g. ``1700000012.345``), whole seconds until the window ends
#: (rounded up, as NestJS's throttler sends them), or an RFC 7231 HTTP date.
ResetFormat = Literal["epoch", "seconds", "http-date"]


class SimulatorConfig(BaseModel):
    """Everything that shapes one simulated team-stats server.

    Args:
        seed: seeds the team, the counts, the faults and the latency jitter.
        team_size: number of team members (0 is allowed: every report is empty).
        api_keys: the keys accepted in ``x-api-key``. Hidden from ``repr`` so they never
            end up in a log line.
        envelope: where the rows sit in a 200 body (see the package docstring).
        string_counts: render every metric count and meta number as a JSON string
            (``"25"``), as some vendor endpoints do.
        latency_ms: added to every API answer.
        latency_jitter_ms: up to this much more, drawn per request from the seed.
        max_page_size: a ``limit`` above this is answered with HTTP 400.
        rate_limit: requests per window per API key; ``None`` disables rate limiting.
        rate_window_s: length of the fixed rate-limit window.
        rate_limit_status: 429 (the common case) or 400 (seen by some clients).
        reset_format: how ``x-ratelimit-reset`` is written.
        fault_rate: probability (0..1) that a valid request gets a fault instead of its answer.
        fault_kinds: the faults drawn from, uniformly.
        stall_s: how long a ``"stall"`` fault holds the answer back.
        fail_pages: page numbers that always answer HTTP 500, whatever ``fault_rate`` says.
        drift: how fast counts grow while a query is being paged: before each answer,
            every count of a user grows by ``drift * n * r`` (``n`` requests served for
            the query so far, ``r`` in [0, 1) drawn per user), so users climb past
            each other and the sort order changes mid-run, as live data does.
        hidden_users: user ids that are counted in ``totalItems`` but never appear on
            any page (a user the API "loses"); the last page comes up short.
        drop_fields: record fields left out of every row (e.g. ``userId``, or a metric
            that "vanished").
        extra_fields: fields added to every row with a count (a metric the API added).

    Raises:
        pydantic.ValidationError: naming the field that is wrong.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    team_size: int = Field(default=50, ge=0)
    api_keys: tuple[str, ...] = Field(default=("sim-key",), min_length=1, repr=False)
    envelope: Envelope = "data"
    string_counts: bool = False
    latency_ms: float = Field(default=0, ge=0)
    latency_jitter_ms: float = Field(default=0, ge=0)
    max_page_size: int = Field(default=MAX_PAGE_SIZE, ge=1)
    rate_limit: int | None = Field(default=None, ge=1)
    rate_window_s: float = Field(default=60.0, gt=0)
    rate_limit_status: Literal[429, 400] = 429
    reset_format: ResetFormat = "epoch"
    fault_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fault_kinds: tuple[FaultKind, ...] = Field(default=FAULT_KINDS, min_length=1)
    stall_s: float = Field(default=30.0, ge=0)
    fail_pages: frozenset[int] = frozenset()
    drift: float = Field(default=0.0, ge=0.0)
    hidden_users: frozenset[str] = frozenset()
    drop_fields: frozenset[str] = frozenset()
    extra_fields: tuple[str, ...] = ()
