"""Wire models: a parsed page, its paging meta, and the parser that finds them.

The team-stats 200 body is undocumented (see ``shared/api/KNOWN.md``). Every
endpoint of this backend wraps its data as ``{"message": ..., "payload": ...}``
but the record list sits in different places: ``payload`` itself,
``payload.data``, ``payload.items``, ``payload.payload`` or a named key. This
module is the one place that knows those shapes. :class:`ResponseShape` holds
the assumptions a user can override (``records_path``, ``user_id_field``), and
:func:`parse_page` either returns a :class:`Page` or raises an error that names
what it found and the setting that points it at the record list.

Records stay plain dicts (the API's own field names) rather than one pydantic
model per row: a large page holds thousands of rows and the per-row cost of a
model would dominate an export. Counts that arrive as strings (``"25"``) are
normalised to integers here, once.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from fetcher.errors import InvalidJSONError, PageRef, ShapeError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fetcher.spec import QuerySpec

__all__ = [
    "Page",
    "PageMeta",
    "ResponseShape",
    "ShapeFindings",
    "TeamMember",
    "inspect_shape",
    "parse_page",
    "parse_team_members",
]

#: Keys under which this backend has been seen to put a list, in the order tried.
LIST_KEYS: Final = ("data", "items", "payload", "records", "rows", "results")

#: Fields that identify a user rather than count something: never coerced to numbers,
#: even when they look numeric (a user id such as "12345" must stay a string).
IDENTITY_FIELDS: Final = frozenset(
    {"userId", "id", "_id", "firstName", "lastName", "name", "userName", "email"}
)

_INT_RE: Final = re.compile(r"-?\d{1,18}")
_FLOAT_RE: Final = re.compile(r"-?\d+\.\d+")

#: The longest string a record field may hold: names and ids are short; a
#: megabyte string is a broken or hostile answer, refused rather than stored.
MAX_FIELD_CHARS: Final = 65_536

#: How deep the parser looks for the record list below the envelope.
_MAX_DEPTH: Final = 3


class PageMeta(BaseModel):
    """Paging meta as the backend's NestJS paginator reports it.

    Numbers that arrive as strings (``"25"``) are coerced. Any field may be
    missing; fetcher only relies on ``total_pages`` (or ``total_items``).
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    total_items: NonNegativeInt | None = Field(default=None, alias="totalItems")
    item_count: NonNegativeInt | None = Field(default=None, alias="itemCount")
    items_per_page: NonNegativeInt | None = Field(default=None, alias="itemsPerPage")
    total_pages: NonNegativeInt | None = Field(default=None, alias="totalPages")
    current_page: NonNegativeInt | None = Field(default=None, alias="currentPage")

    def pages_for(self, page_size: int) -> int | None:
        """The number of pages the query has, from ``totalPages`` or ``totalItems``."""
        if self.total_pages is not None:
            return self.total_pages
        if self.total_items is not None:
            return -(-self.total_items // page_size)
        return None


@dataclass(frozen=True, slots=True)
class ResponseShape:
    """Where in a response body the records and meta are; the parser's assumptions.

    Args:
        records_path: dotted path to the record list (``"payload.data"``);
            ``None`` finds it automatically among the known variants.
        user_id_field: the record field holding the user id.
    """

    records_path: str | None = None
    user_id_field: str = "userId"


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query's results, as delivered to sinks and iterators.

    Attributes:
        query: the query this page belongs to.
        number: its 1-based page number.
        records: the rows, API field names, counts as integers.
        meta: paging meta, when the response carried any.
        fetched_at: when the response arrived (UTC).
        attempts: requests it took, retries included.
        elapsed_s: seconds from the first attempt to the parsed page.
        records_path: where the records were found (e.g. ``payload.data``).
        repair: a re-read of the users its query was missing at its end
            (see :mod:`fetcher.run.paging`).
        dropped: records left out because their user was delivered already on
            another page of the query (the first answer wins).
    """

    query: QuerySpec
    number: int
    records: list[dict[str, Any]]
    meta: PageMeta | None = None
    fetched_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    attempts: int = 1
    elapsed_s: float = 0.0
    records_path: str = ""
    repair: bool = False
    dropped: int = 0

    @property
    def ref(self) -> PageRef:
        """This page's reference, as errors and reports name it."""
        return PageRef(self.query.key, self.number)


def _describe(value: Any) -> str:
    """A short, safe description of a JSON value for error messages."""
    if isinstance(value, dict):
        keys = ", ".join(list(map(str, value))[:12])
        return f"an object with keys [{keys}]"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def _follow(body: Any, path: str) -> tuple[Any, list[dict[str, Any]]]:
    """Follow a dotted path; return the value and the objects passed on the way."""
    node = body
    parents: list[dict[str, Any]] = []
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        parents.append(node)
        node = node[part]
    return node, parents


def _find_records(body: Any) -> tuple[str, Any, list[dict[str, Any]]]:
    """Find the record list among the envelope variants KNOWN.md describes."""
    path: list[str] = []
    node = body
    parents: list[dict[str, Any]] = []
    if isinstance(node, dict) and "payload" in node:
        parents.append(node)
        node = node["payload"]
        path.append("payload")
    for _ in range(_MAX_DEPTH):
        if isinstance(node, list):
            return ".".join(path) or "(body)", node, parents
        if not isinstance(node, dict):
            break
        key = next((k for k in LIST_KEYS if k in node), None)
        if key is None:
            # A named key such as payload.emails: the one list of objects here.
            lists = [k for k, v in node.items() if isinstance(v, list) and k != "meta"]
            if len(lists) != 1:
                break
            key = lists[0]
        parents.append(node)
        node = node[key]
        path.append(key)
    raise LookupError(".".join(path) or "(body)")


def _find_meta(parents: list[dict[str, Any]]) -> Any:
    for node in reversed(parents):
        meta = node.get("meta")
        if isinstance(meta, dict):
            return meta
        if "totalPages" in node or "totalItems" in node:
            return node
    return None


def _coerce_number(value: str) -> Any:
    if _INT_RE.fullmatch(value):
        return int(value)
    if _FLOAT_RE.fullmatch(value):
        return float(value)
    return value


def normalise_records(
    records: list[Any], *, where: str, ref: PageRef, max_chars: int = MAX_FIELD_CHARS
) -> list[dict[str, Any]]:
    """Check every record is an object and coerce numeric strings to numbers in place.

    Identity fields (:data:`IDENTITY_FIELDS`) are left alone.

    Raises:
        ShapeError: if an item of the list is not a JSON object, or a string
            field is longer than ``max_chars`` (a hostile or broken answer).
    """
    identity = IDENTITY_FIELDS
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ShapeError(
                f"item {index} of {where} is {_describe(record)}, not a record object; "
                "set records_path (--records-path) to the list of records",
                page=ref,
                found=_describe(record),
            )
        for key, value in record.items():
            if value.__class__ is str:
                if len(value) > max_chars:
                    raise ShapeError(
                        f"field {key!r} of record {index} is {len(value):,} characters, more "
                        f"than the {max_chars:,} a team-stats field can sensibly hold; refusing",
                        page=ref,
                        found=f"{key}: {len(value):,} characters",
                    )
                if key not in identity:
                    record[key] = _coerce_number(value)
    return records


def parse_page(
    content: bytes,
    *,
    query: QuerySpec,
    number: int,
    shape: ResponseShape | None = None,
) -> Page:
    """Parse one response body into a :class:`Page`.

    Args:
        content: the raw response body.
        query: the query the page belongs to.
        number: the page number that was requested.
        shape: where to look; the default finds every known envelope variant.

    Raises:
        InvalidJSONError: the body is not JSON (e.g. cut short).
        ShapeError: the body is JSON but holds no record list where expected,
            or its meta is malformed. The message says what was found and
            which setting points the parser at the records.
    """
    shape = shape or ResponseShape()
    ref = PageRef(query.key, number)
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSONError(
            f"response body is not valid JSON ({exc}); {len(content)} bytes received",
            page=ref,
            found=f"{len(content)} bytes",
        ) from exc

    if shape.records_path:
        try:
            records, parents = _follow(body, shape.records_path)
        except KeyError as exc:
            raise ShapeError(
                f"records_path {shape.records_path!r} does not exist in the response "
                f"(missing key {exc.args[0]!r}); the body is {_describe(body)}. "
                "Fix --records-path, or leave it unset to detect the shape",
                page=ref,
                found=_describe(body),
            ) from None
        where = shape.records_path
    else:
        try:
            where, records, parents = _find_records(body)
        except LookupError as exc:
            raise ShapeError(
                f"no record list found in the response (looked under {exc.args[0]!r}); "
                f"the body is {_describe(body)}. Set records_path (--records-path) "
                "to the dotted path of the record list, e.g. payload.data",
                page=ref,
                found=_describe(body),
            ) from None
    if not isinstance(records, list):
        raise ShapeError(
            f"{where} is {_describe(records)}, not a list of records; "
            "set records_path (--records-path) to the record list",
            page=ref,
            found=_describe(records),
        )

    meta: PageMeta | None = None
    raw_meta = _find_meta(parents)
    if raw_meta is not None:
        try:
            meta = PageMeta.model_validate(raw_meta)
        except ValidationError as exc:
            raise ShapeError(
                f"paging meta is malformed: {_first_error(exc)}",
                page=ref,
                found=_describe(raw_meta),
            ) from None

    return Page(
        query=query,
        number=number,
        records=normalise_records(records, where=where, ref=ref),
        meta=meta,
        records_path=where,
    )


@dataclass(frozen=True, slots=True)
class ShapeFindings:
    """How a page's records compare with what fetcher knows of its report type.

    Attributes:
        records_path: where the records were.
        new_fields: fields fetcher does not know (a metric the API added?); kept.
        missing_metrics: metrics of the type that no record carried (vanished?).
    """

    records_path: str
    new_fields: tuple[str, ...]
    missing_metrics: tuple[str, ...]


def inspect_shape(page: Page, *, user_id_field: str = "userId") -> ShapeFindings:
    """Compare a page's records with the fields fetcher expects for its report type.

    Raises:
        ShapeError: a record lacks the user id field (rows could not be keyed).
    """
    known = IDENTITY_FIELDS | set(page.query.metrics) | {user_id_field}
    seen: dict[str, None] = {}
    for record in page.records:
        if user_id_field not in record:
            raise missing_user_id(record, user_id_field, page.ref)
        seen.update(dict.fromkeys(record))
    new = tuple(name for name in seen if name not in known)
    missing = tuple(m for m in page.query.metrics if m not in seen) if page.records else ()
    return ShapeFindings(page.records_path, new, missing)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def missing_user_id(record: Mapping[str, Any], field: str, ref: PageRef) -> ShapeError:
    """The error for a record without its user id field: rows could not be keyed."""
    return ShapeError(
        f"a record has no {field!r} field, so rows cannot be keyed; it has "
        f"[{', '.join(list(map(str, record))[:12])}]. Set --user-id-field if the API "
        "renamed it",
        page=ref,
        found=", ".join(map(str, record)),
    )


#: Fields that have been seen, or are likely, to hold a team member's id.
MEMBER_ID_FIELDS: Final = ("id", "userId", "user_id", "_id", "encryptedId")


@dataclass(frozen=True, slots=True)
class TeamMember:
    """One entry of ``GET /v1/user/team-member-list``, as far as it was understood."""

    user_id: str
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None


def parse_team_members(content: bytes) -> tuple[list[TeamMember], list[str]]:
    """Parse the (undocumented) team member list defensively.

    The list is found like a page's records (any known envelope); each member's
    id is taken from the first of :data:`MEMBER_ID_FIELDS` it has.

    Returns:
        The members understood, and a description of each entry that was not.

    Raises:
        InvalidJSONError: the body is not JSON.
        ShapeError: no list of members was found; the message shows what was.
    """
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSONError(f"team member list is not valid JSON ({exc})") from exc
    try:
        where, entries, _ = _find_records(body)
    except LookupError:
        raise ShapeError(
            f"no list of members found in the team member list; the body is {_describe(body)}",
            found=_describe(body),
        ) from None
    if not isinstance(entries, list):
        raise ShapeError(f"{where} is {_describe(entries)}, not a list", found=_describe(entries))
    members: list[TeamMember] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"entry {index} is {_describe(entry)}, not an object")
            continue
        field_name = next((f for f in MEMBER_ID_FIELDS if entry.get(f) not in (None, "")), None)
        if field_name is None:
            problems.append(f"entry {index} has no id field ({_describe(entry)})")
            continue
        user_id = str(entry[field_name]).strip()
        if user_id in seen:
            problems.append(f"entry {index} repeats user id {user_id!r}")
            continue
        seen.add(user_id)
        members.append(
            TeamMember(
                user_id=user_id,
                first_name=_text(entry.get("firstName")),
                last_name=_text(entry.get("lastName")),
                email=_text(entry.get("email")),
            )
        )
    return members, problems


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
