"""The simulator's knobs: one frozen, validated :class:`SimulatorConfig`.

Every behaviour the simulator can vary (team, envelope, count encoding, latency,
rate limiting, faults) is a field here, so a test, demo or benchmark states the
whole server it runs against in one value, and an invalid knob fails before a
port is opened.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fetcher.simulator._vocab import MAX_PAGE_SIZE

__all__ = [
    "FAULT_KINDS",
    "CountOn",
    "Envelope",
    "FaultKind",
    "ResetFormat",
    "SimulatorConfig",
    "WindowMode",
]

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

#: How ``x-ratelimit-reset`` is written, each as some server sends it:
#:
#: - ``"epoch"``: epoch seconds of the reset with milliseconds (``1700000012.345``).
#: - ``"seconds"``: whole seconds until the reset, rounded up, at least 1 (NestJS's throttler).
#: - ``"fractional"``: seconds until the reset with milliseconds, rounded up, at least 0.001
#:   (``0.734``).
#: - ``"epoch-seconds"``: whole epoch seconds of the reset, rounded up (GitHub-style APIs).
#: - ``"http-date"``: an RFC 7231 HTTP date of the reset, rounded up to the second.
ResetFormat = Literal["epoch", "seconds", "fractional", "epoch-seconds", "http-date"]

#: How rate-limit windows are laid out (see ``fetcher.simulator._ratelimit``):
#:
#: - ``"first-request"``: a window opens with the first counted hit after the previous one
#:   expired (NestJS's throttler, express-rate-limit's memory store).
#: - ``"aligned"``: fixed windows on the wall clock, ``[phase + k*W, phase + (k+1)*W)``, as
#:   limiters keyed on ``floor(time / W)`` and gateways lay them out.
#: - ``"sliding"``: a sliding log: admitted while fewer than ``limit`` hits lie in the last W.
WindowMode = Literal["first-request", "aligned", "sliding"]

#: When a request's hit is counted: when it arrives (the common case), or when its answer
#: is sent (servers that record the hit in an on-finish hook).
CountOn = Literal["arrival", "answer"]


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
        key_rate_limits: one limit per key of ``api_keys``, in their order, each
            overriding ``rate_limit`` for its key (workspaces on their own plans);
            empty, every key has ``rate_limit``. Needs ``rate_limit`` (the window
            layout and the default).
        rate_window_s: length of a rate-limit window (W).
        rate_window_mode: how windows are laid out: ``"first-request"``, ``"aligned"`` or
            ``"sliding"`` (see :data:`WindowMode`).
        rate_window_phase_s: where aligned windows start on the wall clock, in seconds
            (taken modulo W); ``None`` draws it from ``seed``, so it is arbitrary but
            reproducible. Ignored by the other modes.
        rate_count_on: ``"arrival"`` counts a hit when the request is checked;
            ``"answer"`` checks on arrival against the hits counted so far and counts the
            hit when the answer is sent, in the window in force then.
        rate_count_refused: refused requests are counted as hits too, so a client that
            keeps hammering keeps a full window (or sliding log) full.
        rate_retry_after: whether a refusal carries ``retry-after``.
        rate_limit_status: 429 (the common case) or 400 (seen by some clients).
        reset_format: how ``x-ratelimit-reset`` is written (see :data:`ResetFormat`).
        foreign_share: the share (0 <= share < 1) of the first key's budget that a
            background consumer on the same key spends, as another tool would: about
            ``share * rate_limit`` hits per window, evenly spaced, for the server's life.
            Needs ``rate_limit``.
        warm: compute every member's figures (both types, both ``countBy``) before
            serving, so that a query's first page is answered in ``latency_ms`` like
            every other one: computed on first use they cost about 40 ms per 1,000
            users of CPU, which a client under a rate limit meets as a first answer
            that came late (0.1 s to start for 2,000 users, four times 20 us each).
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
    key_rate_limits: tuple[Annotated[int, Field(ge=1)], ...] = ()
    rate_window_s: float = Field(default=60.0, gt=0)
    rate_window_mode: WindowMode = "first-request"
    rate_window_phase_s: Annotated[float, Field(allow_inf_nan=False)] | None = None
    rate_count_on: CountOn = "arrival"
    rate_count_refused: bool = False
    rate_retry_after: bool = True
    rate_limit_status: Literal[429, 400] = 429
    reset_format: ResetFormat = "epoch"
    foreign_share: float = Field(default=0.0, ge=0.0, lt=1.0)
    warm: bool = False
    fault_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fault_kinds: tuple[FaultKind, ...] = Field(default=FAULT_KINDS, min_length=1)
    stall_s: float = Field(default=30.0, ge=0)
    fail_pages: frozenset[int] = frozenset()
    drift: float = Field(default=0.0, ge=0.0)
    hidden_users: frozenset[str] = frozenset()
    drop_fields: frozenset[str] = frozenset()
    extra_fields: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_limit_per_key(self) -> Self:
        if self.key_rate_limits and self.rate_limit is None:
            raise ValueError("key_rate_limits needs rate_limit set (the default limit)")
        if self.key_rate_limits and len(self.key_rate_limits) != len(self.api_keys):
            raise ValueError(
                f"key_rate_limits has {len(self.key_rate_limits)} limits for "
                f"{len(self.api_keys)} api_keys; give one per key, in order"
            )
        return self

    @model_validator(mode="after")
    def _foreign_client_needs_a_limit(self) -> Self:
        # A foreign client spends a share of a budget; without a limit there is none.
        if self.foreign_share > 0 and self.rate_limit is None:
            raise ValueError("foreign_share > 0 needs rate_limit set (the budget it spends)")
        return self
