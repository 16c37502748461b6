import datetime as dt

import orjson
import pytest

from fetcher.errors import InvalidJSONError, ShapeError
from fetcher.models import Page, PageMeta, ResponseShape, parse_page, parse_team_members
from fetcher.spec import QuerySpec

SPEC = QuerySpec(
    user_ids=("a", "b"),
    start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    end=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    type="email",
    page_size=2,
)
ROWS = [{"userId": "a", "emailSent": 3}, {"userId": "b", "emailSent": 1}]
META = {"totalItems": 2, "itemCount": 2, "itemsPerPage": 2, "totalPages": 1, "currentPage": 1}


def parse(body: object, **shape: str) -> Page:
    return parse_page(orjson.dumps(body), query=SPEC, number=1, shape=ResponseShape(**shape))


@pytest.mark.parametrize(
    ("body", "where", "has_meta"),
    [
        ({"message": "ok", "payload": {"data": ROWS, "meta": META}}, "payload.data", True),
        ({"message": "ok", "payload": {"items": ROWS, "meta": META}}, "payload.items", True),
        ({"message": "ok", "payload": ROWS}, "payload", False),
        ({"message": "ok", "payload": {"payload": ROWS, "meta": META}}, "payload.payload", True),
        (
            {"message": "ok", "payload": {"teamStats": ROWS, "meta": META}},
            "payload.teamStats",
            True,
        ),
        (
            {"message": "ok", "payload": {"data": {"items": ROWS}, "meta": META}},
            "payload.data.items",
            True,
        ),
        (ROWS, "(body)", False),
    ],
)
def test_every_known_envelope_is_parsed(body: object, where: str, has_meta: bool) -> None:
    """Each envelope variant in KNOWN.md yields the same records, and meta when present."""
    page = parse(body)
    assert page.records == ROWS
    assert page.records_path == where
    assert (page.meta is not None) is has_meta


def test_numeric_strings_become_numbers_but_ids_stay_strings() -> None:
    """Counts sent as strings are coerced; identity fields that look numeric are not."""
    body = {
        "payload": {
            "data": [{"userId": "12345", "firstName": "7", "emailSent": "25", "rate": "0.5"}],
            "meta": {"totalItems": "1", "totalPages": "1"},
        }
    }
    page = parse(body)
    assert page.records == [{"userId": "12345", "firstName": "7", "emailSent": 25, "rate": 0.5}]
    assert page.meta == PageMeta(total_items=1, total_pages=1)


def test_non_numeric_strings_are_kept() -> None:
    """A string that is not a number stays as it was."""
    page = parse({"payload": [{"userId": "a", "note": "12 apples"}]})
    assert page.records[0]["note"] == "12 apples"


def test_explicit_records_path_wins() -> None:
    """records_path points the parser at a list it would not find by itself."""
    body = {"payload": {"a": [{"x": 1}], "b": ROWS}}
    page = parse(body, records_path="payload.b")
    assert page.records == ROWS


def test_unknown_shape_names_what_it_found_and_the_setting() -> None:
    """An unrecognised body fails with its keys and the records_path setting named."""
    with pytest.raises(ShapeError) as info:
        parse({"message": "ok", "result": {"a": 1}})
    message = str(info.value)
    assert "message, result" in message
    assert "records_path" in message
    assert "page 1" in message


def test_ambiguous_lists_are_not_guessed() -> None:
    """Two candidate lists under payload are an error, not a guess."""
    with pytest.raises(ShapeError, match="records_path"):
        parse({"payload": {"one": [{"a": 1}], "two": [{"b": 2}]}})


def test_wrong_records_path_is_reported() -> None:
    """A records_path that does not exist says which key is missing."""
    with pytest.raises(ShapeError, match="missing key 'rows'"):
        parse({"payload": {"data": ROWS}}, records_path="payload.rows")


def test_records_must_be_objects() -> None:
    """A list of non-objects is a shape error naming the item."""
    with pytest.raises(ShapeError, match="item 0 of payload"):
        parse({"payload": [1, 2, 3]})


def test_malformed_meta_is_a_shape_error() -> None:
    """A meta block with a non-numeric total is reported, not ignored."""
    with pytest.raises(ShapeError, match="totalPages"):
        parse({"payload": {"data": ROWS, "meta": {"totalPages": "many"}}})


def test_truncated_body_is_invalid_json() -> None:
    """A body cut short raises InvalidJSONError (which is retryable)."""
    content = orjson.dumps({"payload": {"data": ROWS}})[:20]
    with pytest.raises(InvalidJSONError) as info:
        parse_page(content, query=SPEC, number=3)
    assert info.value.retryable
    assert "page 3" in str(info.value)


def test_pages_for_uses_total_items_when_total_pages_is_missing() -> None:
    """Without totalPages the page count comes from totalItems and the page size."""
    assert PageMeta(total_items=21).pages_for(10) == 3
    assert PageMeta(total_items=20).pages_for(10) == 2
    assert PageMeta(total_items=0).pages_for(10) == 0
    assert PageMeta().pages_for(10) is None


@pytest.mark.parametrize(
    "body",
    [
        {"message": "ok", "payload": [{"id": "a1", "firstName": "A"}, {"id": "b2"}]},
        {"payload": {"data": [{"userId": "a1"}, {"userId": "b2"}]}},
        {"payload": {"members": [{"user_id": "a1"}, {"_id": "b2"}]}},
        [{"id": "a1"}, {"id": "b2"}],
    ],
)
def test_team_member_list_shapes(body: object) -> None:
    """The undocumented member list is read from any known envelope and id field."""
    members, problems = parse_team_members(orjson.dumps(body))
    assert [m.user_id for m in members] == ["a1", "b2"]
    assert problems == []


def test_team_member_list_reports_what_it_did_not_understand() -> None:
    """Entries without an id, non-objects and repeats are skipped and described."""
    body = {"payload": [{"id": "a1"}, {"name": "no id"}, "x", {"id": "a1"}, {"id": 42}]}
    members, problems = parse_team_members(orjson.dumps(body))
    assert [m.user_id for m in members] == ["a1", "42"]
    assert len(problems) == 3
    assert "entry 1 has no id field" in problems[0]
    assert "not an object" in problems[1]
    assert "repeats user id 'a1'" in problems[2]


def test_team_member_list_without_a_list_is_a_shape_error() -> None:
    """A body with no list of members fails naming what it held."""
    with pytest.raises(ShapeError, match="keys \\[message, total\\]"):
        parse_team_members(orjson.dumps({"message": "ok", "total": 3}))
