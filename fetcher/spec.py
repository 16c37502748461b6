"""The query: what one team-stats report request asks for.

A :class:`QuerySpec` is frozen and validated on construction, so an invalid
query fails before any request is sent, with an error naming the field. It
renders the exact JSON body the vendor's reference page documents
(:meth:`QuerySpec.body`): camelCase keys and dates such as
``2024-01-01T00:00:00.000+00:00``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from fetcher import defaults
from fetcher.errors import ConfigError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "EMAIL_METRICS",
    "MAX_PAGE_SIZE",
    "METRICS_BY_TYPE",
    "PROSPECT_METRICS",
    "CountBy",
    "QuerySpec",
    "ReportType",
    "SortOrder",
    "SpecError",
    "format_api_datetime",
]

ReportType = Literal["prospect", "email"]
CountBy = Literal["relative", "absolute"]
SortOrder = Literal["asc", "desc"]

#: Metrics of a ``type: "prospect"`` report, in the reference page's order.
#: They are the valid ``orderBy`` values and the count fields of each row.
PROSPECT_METRICS: Final[tuple[str, ...]] = (
    "prospectAdded",
    "prospectContacted",
    "opened",
    "clicked",
    "replied",
    "unSubscribed",
    "bounced",
    "Uncategorized",
    "Interested",
    "Not Interested",
    "Meeting Booked",
    "Out of Office",
    "Closed",
    "Not Now",
    "Do Not Contact",
)

#: Metrics of a ``type: "email"`` report, in the reference page's order.
EMAIL_METRICS: Final[tuple[str, ...]] = (
    "prospectContacted",
    "emailSent",
    "opened",
    "clicked",
    "replied",
    "bounced",
)

METRICS_BY_TYPE: Final[dict[str, tuple[str, ...]]] = {
    "prospect": PROSPECT_METRICS,
    "email": EMAIL_METRICS,
}

#: Default ``orderBy`` per report type: its headline count.
DEFAULT_ORDER_BY: Final[dict[str, str]] = {"prospect": "prospectAdded", "email": "emailSent"}

#: Records per page when none is given (the value one public integration uses).
DEFAULT_PAGE_SIZE: Final = defaults.PAGE_SIZE

#: The largest page size fetcher will ask for. The API publishes no maximum;
#: 1,000 rows of a few dozen fields is about 0.5 MB per response.
MAX_PAGE_SIZE: Final = 1000


def format_api_datetime(value: dt.datetime) -> str:
    """Render an aware datetime the way the API's reference page does.

    Args:
        value: a time-zone aware datetime.

    Returns:
        ISO 8601 with milliseconds and a ``+HH:MM`` offset, e.g.
        ``2024-01-01T00:00:00.000+00:00``.

    Raises:
        ValueError: if ``value`` is naive.
    """
    if value.utcoffset() is None:
        raise ValueError("datetime must be time-zone aware")
    return value.isoformat(timespec="milliseconds")


def _check_user_ids(value: tuple[str, ...]) -> tuple[str, ...]:
    cleaned = tuple(user_id.strip() for user_id in value)
    blanks = [i for i, user_id in enumerate(cleaned) if not user_id]
    if blanks:
        raise ValueError(f"user id at position {blanks[0]} is blank; remove empty entries")
    seen: set[str] = set()
    duplicates = [u for u in cleaned if u in seen or seen.add(u)]  # type: ignore[func-returns-value]
    if duplicates:
        raise ValueError(f"user id {duplicates[0]!r} is listed more than once; list each user once")
    return cleaned


UserIds = Annotated[tuple[str, ...], Field(min_length=1), AfterValidator(_check_user_ids)]


class SpecError(ConfigError, ValueError):
    """A query that is not valid; raised by :class:`QuerySpec` before any request.

    The message names the first field that is wrong and why; every problem is
    in :meth:`errors` (pydantic's list, with ``loc`` naming each field).

    Args:
        validation: pydantic's error.
    """

    def __init__(self, validation: ValidationError) -> None:
        first = validation.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        super().__init__(first["msg"].removeprefix("Value error, "), field=field)
        self.validation = validation

    def errors(self) -> list[ErrorDetails]:
        """Every problem pydantic found, each with its ``loc``, ``msg`` and ``input``."""
        return self.validation.errors()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.validation,))


class QuerySpec(BaseModel):
    """One team-stats report: which users, which window, which report type.

    Args:
        user_ids: encrypted user ids (non-empty, unique, no blanks).
        start: start of the window, time-zone aware.
        end: end of the window, time-zone aware, not before ``start``.
        type: ``"prospect"`` or ``"email"``.
        count_by: ``"absolute"`` (default) or ``"relative"``.
        order_by: the metric to sort by; must belong to ``type``'s metrics.
            Defaults to ``prospectAdded`` (prospect) or ``emailSent`` (email).
        sort_order: ``"desc"`` (default) or ``"asc"``.
        page_size: records per page, 1 to :data:`MAX_PAGE_SIZE`.
        workspace: the configured workspace (``[[workspaces]]``) whose key asks
            for it; never sent to the API. ``None`` (no workspaces) leaves the
            query's key as it always was.

    Raises:
        SpecError: naming the field that is wrong (a
            :class:`~fetcher.errors.ConfigError` and a :class:`ValueError`;
            pydantic's own error is its ``validation``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    if not TYPE_CHECKING:  # type checkers keep the fields' signature (pydantic's plugin)

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise SpecError(exc) from None

    user_ids: UserIds
    start: AwareDatetime
    end: AwareDatetime
    type: ReportType
    count_by: CountBy = "absolute"
    order_by: str | None = None
    sort_order: SortOrder = "desc"
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    workspace: str | None = None

    @model_validator(mode="after")
    def _check_window_and_order(self) -> Self:
        if self.start > self.end:
            raise ValueError(
                f"start ({format_api_datetime(self.start)}) is after end "
                f"({format_api_datetime(self.end)}); swap them"
            )
        metrics = METRICS_BY_TYPE[self.type]
        if self.order_by is None:
            object.__setattr__(self, "order_by", DEFAULT_ORDER_BY[self.type])
        elif self.order_by not in metrics:
            raise ValueError(
                f"order_by {self.order_by!r} is not a {self.type} metric; "
                f"use one of: {', '.join(metrics)}"
            )
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric fields this report type returns."""
        return METRICS_BY_TYPE[self.type]

    @property
    def sort_field(self) -> str:
        """The resolved ``orderBy`` (the type's default when none was given)."""
        assert self.order_by is not None  # set by the validator
        return self.order_by

    @functools.cached_property
    def key(self) -> str:
        """A short stable identifier of this query, for logs, reports and checkpoints.

        Computed once per spec: it hashes the whole query, every user id included,
        and every page, log line and checkpoint of the query asks for it.
        """
        # Without a workspace the query is hashed exactly as before workspaces
        # existed, so state files of earlier runs still resume.
        dumped = self.model_dump_json(exclude={"workspace"} if self.workspace is None else None)
        digest = hashlib.sha256(dumped.encode()).hexdigest()[:12]
        where = "" if self.workspace is None else f"{self.workspace}/"
        return f"{where}{self.type}:{self.start.date()}..{self.end.date()}:{digest}"

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy (see pydantic); the cached :attr:`key` is not carried over."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("key", None)
        return copy

    def body(self, page: int) -> dict[str, Any]:
        """The JSON request body for one page, exactly as the reference page documents it.

        Args:
            page: 1-based page number.
        """
        return {
            "userIds": list(self.user_ids),
            "startDate": format_api_datetime(self.start),
            "endDate": format_api_datetime(self.end),
            "countBy": self.count_by,
            "limit": self.page_size,
            "page": page,
            "sortOrder": self.sort_order,
            "orderBy": self.sort_field,
            "type": self.type,
        }
