import datetime as dt

import pytest

from fetcher.errors import ServerError, ShapeError
from fetcher.models import Page, PageMeta
from fetcher.run.paging import QueryPlan, Resume, Schedule
from fetcher.spec import QuerySpec


def spec(page_size: int = 10, n_users: int = 3) -> QuerySpec:
    return QuerySpec(
        user_ids=tuple(f"u{i}" for i in range(n_users)),
        start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        type="prospect",
        page_size=page_size,
    )


def page(plan: QueryPlan, number: int, count: int, total_pages: int | None = None) -> Page:
    meta = PageMeta(total_pages=total_pages) if total_pages is not None else None
    return Page(plan.spec, number, [{"userId": f"r{i}"} for i in range(count)], meta)


def drain(plan: QueryPlan) -> list[int]:
    taken = []
    while (n := plan.take()) is not None:
        taken.append(n)
    return taken


def test_page_one_goes_first_then_the_rest_at_once() -> None:
    """Nothing but page 1 is handed out until it is back; then pages 2..N all are."""
    plan = QueryPlan(spec())
    assert drain(plan) == [1]
    assert plan.complete(page(plan, 1, 10, total_pages=4))
    assert drain(plan) == [2, 3, 4]
    for n in (3, 2):
        assert plan.complete(page(plan, n, 10))
    assert not plan.finished
    assert plan.complete(page(plan, 4, 5))
    assert plan.finished
    assert plan.done == {1, 2, 3, 4}
    assert plan.rows == 35


def test_zero_total_finishes_after_page_one() -> None:
    """An empty result (totalPages 0) is one empty page, delivered, and done."""
    plan = QueryPlan(spec())
    drain(plan)
    assert plan.complete(page(plan, 1, 0, total_pages=0))
    assert plan.finished
    assert drain(plan) == []


def test_without_meta_pages_run_ahead_until_a_short_page() -> None:
    """Without a total, pages are handed out one by one; the first short page ends it."""
    plan = QueryPlan(spec())
    drain(plan)
    plan.complete(page(plan, 1, 10))
    assert [plan.take(), plan.take(), plan.take()] == [2, 3, 4]
    assert plan.complete(page(plan, 3, 4))  # short: the last page
    assert not plan.complete(page(plan, 4, 0))  # past the end: discarded
    assert plan.take() is None
    assert plan.complete(page(plan, 2, 10))
    assert plan.finished
    assert plan.done == {1, 2, 3}
    assert plan.discarded == 1


def test_without_meta_an_empty_page_ends_before_itself() -> None:
    """When the total divides the page size, the empty page after the last full one ends it."""
    plan = QueryPlan(spec())
    drain(plan)
    plan.complete(page(plan, 1, 10))
    assert plan.take() == 2
    assert plan.take() == 3
    assert not plan.complete(page(plan, 3, 0))
    assert plan.end == 2
    assert plan.complete(page(plan, 2, 10))
    assert plan.finished
    assert plan.rows == 20


def test_a_page_is_delivered_at_most_once() -> None:
    """Completing the same page twice delivers it once."""
    plan = QueryPlan(spec())
    drain(plan)
    assert plan.complete(page(plan, 1, 10, total_pages=2))
    assert not plan.complete(page(plan, 1, 10, total_pages=2))


def test_failed_pages_are_missing_and_the_rest_finish() -> None:
    """A failed page is listed as missing; the others are still handed out."""
    plan = QueryPlan(spec())
    drain(plan)
    plan.complete(page(plan, 1, 10, total_pages=3))
    assert drain(plan) == [2, 3]
    plan.fail(2, ServerError("boom", status=500))
    plan.complete(page(plan, 3, 1))
    assert plan.finished
    assert list(plan.missing) == [2]


def test_failed_page_one_fails_the_query() -> None:
    """If page 1 fails the query's size is unknown and the query counts as failed."""
    plan = QueryPlan(spec())
    drain(plan)
    plan.fail(1, ServerError("boom", status=500))
    assert plan.finished
    assert plan.query_failed
    assert drain(plan) == []


def test_absurd_total_is_refused() -> None:
    """A totalPages above max_pages fails the query instead of sending that many requests."""
    plan = QueryPlan(spec(), max_pages=100)
    drain(plan)
    assert not plan.complete(page(plan, 1, 10, total_pages=10**9))
    assert plan.finished
    assert "1,000,000,000 pages" in str(plan.missing[1])


def test_open_ended_query_stops_at_max_pages() -> None:
    """Without a total and without a short page, paging stops at max_pages with an error."""
    plan = QueryPlan(spec(), max_pages=3)
    drain(plan)
    plan.complete(page(plan, 1, 10))
    assert drain(plan) == [2, 3]
    plan.complete(page(plan, 2, 10))
    plan.complete(page(plan, 3, 10))
    assert plan.take() is None
    assert plan.finished
    assert 4 in plan.missing


def test_skipped_pages_are_not_handed_out() -> None:
    """Pages written by an earlier run are skipped."""
    plan = QueryPlan(spec(), skip=frozenset({2, 4}))
    drain(plan)
    plan.complete(page(plan, 1, 10, total_pages=5))
    assert drain(plan) == [3, 5]


def test_schedule_prefers_started_queries() -> None:
    """The schedule finishes pages of started queries before starting new ones."""
    a, b = QueryPlan(spec()), QueryPlan(spec(page_size=5))
    schedule = Schedule.of([a, b])
    assert schedule.take() == (a, 1)
    assert schedule.take() == (b, 1)  # a waits on page 1: start b
    assert schedule.take() is None
    a.complete(page(a, 1, 10, total_pages=3))
    assert schedule.take() == (a, 2)
    assert schedule.take() == (a, 3)
    b.complete(page(b, 1, 2, total_pages=1))
    assert schedule.take() == (b, None)  # b is whole: check it
    assert schedule.take() is None
    a.complete(page(a, 2, 10))
    a.complete(page(a, 3, 10))
    assert schedule.take() == (a, None)
    b.finalized = True
    assert schedule.take() is None
    a.finalized = True
    assert schedule.take() is None
    assert schedule.finished
    assert schedule.finished_plans == [b, a]


def test_schedule_opens_no_more_queries_than_may_have_page_one_in_flight() -> None:
    """At most max_opening queries wait for page 1; another starts when one is back."""
    a, b, c = QueryPlan(spec()), QueryPlan(spec(page_size=5)), QueryPlan(spec(page_size=7))
    schedule = Schedule.of([a, b, c], max_opening=2)
    assert schedule.take() == (a, 1)
    assert schedule.take() == (b, 1)
    assert schedule.take() is None  # c would only queue for a request slot
    a.complete(page(a, 1, 10, total_pages=2))
    assert schedule.take() == (a, 2)
    assert schedule.take() == (c, 1)


def users_page(plan: QueryPlan, number: int, users: list[str], **meta: int) -> Page:
    return Page(
        plan.spec, number, [{"userId": u} for u in users], PageMeta(**meta) if meta else None
    )


def test_the_first_answer_for_a_user_wins_and_repeats_are_dropped() -> None:
    """A user served again on a later page (counts moved) is not delivered twice."""
    plan = QueryPlan(spec(page_size=3))
    drain(plan)
    first = users_page(plan, 1, ["a", "b", "c"], total_items=6)
    assert plan.complete(first)
    assert plan.admit(first) is first  # nothing repeated: the page as it came
    drain(plan)
    second = users_page(plan, 2, ["c", "d", "e"])  # c slid down: f slid out of sight
    assert plan.complete(second)
    delivered = plan.admit(second)
    assert [r["userId"] for r in delivered.records] == ["d", "e"]
    assert delivered.dropped == 1
    assert (plan.records, plan.duplicates, plan.rows) == (5, 1, 6)
    assert plan.finished
    assert plan.users_short() == 1


def test_without_a_total_a_repeat_means_a_user_was_missed() -> None:
    """No totalItems: the rows the pages held are the users expected."""
    plan = QueryPlan(spec(page_size=3))
    drain(plan)
    one = users_page(plan, 1, ["a", "b", "c"])
    assert plan.complete(one)
    plan.admit(one)
    assert plan.take() == 2
    page_two = users_page(plan, 2, ["c"])
    assert plan.complete(page_two)
    plan.admit(page_two)
    assert plan.finished
    assert (plan.expected, plan.users_short()) == (4, 1)


def test_a_record_without_user_id_is_a_shape_error() -> None:
    """Rows that cannot be keyed cannot be kept one per user: stop, naming the fields."""
    plan = QueryPlan(spec())
    drain(plan)
    bad = Page(plan.spec, 1, [{"firstName": "Ann"}])
    plan.complete(bad)
    with pytest.raises(ShapeError, match="no 'userId' field"):
        plan.admit(bad)


def test_missing_users_are_the_requested_ids_not_delivered() -> None:
    """The repair pass asks for exactly the users no page delivered."""
    plan = QueryPlan(spec(n_users=4))
    drain(plan)
    one = users_page(plan, 1, ["u0", "u2"], total_items=4)
    plan.complete(one)
    plan.admit(one)
    assert plan.missing_users_now() == ("u1", "u3")


def test_a_finished_query_is_handed_out_once_for_its_check_then_retired() -> None:
    """After its last page, a query is one more job (plan, None); once finalized it retires."""
    a = QueryPlan(spec())
    schedule = Schedule.of([a])
    assert schedule.take() == (a, 1)
    assert schedule.take() is None
    a.complete(page(a, 1, 10, total_pages=1))
    assert schedule.take() == (a, None)
    assert schedule.take() is None  # handed out once
    assert not schedule.finished
    a.finalized = True
    assert schedule.take() is None
    assert schedule.finished
    assert schedule.finished_plans == [a]


def test_a_resumed_query_skips_its_done_pages_and_remembers_its_users() -> None:
    """An interrupted run's done pages are not handed out; its written users are not re-sent."""
    resume = Resume(done=frozenset({1, 2}), end=3, total_pages=3, total_items=7,
                    written=frozenset({"r0", "r1"}), rows=6)  # fmt: skip
    plan = QueryPlan.resuming(spec(page_size=3), resume)
    assert drain(plan) == [3]
    last = users_page(plan, 3, ["r1", "r6"])
    plan.complete(last)
    assert [r["userId"] for r in plan.admit(last).records] == ["r6"]
    assert plan.finished and plan.users_short() == 4


def test_a_resumed_complete_query_is_not_fetched_at_all() -> None:
    """A query the earlier run completed retires without a single job."""
    resume = Resume(done=frozenset({1, 2}), end=2, total_pages=2, finalized=True)
    schedule = Schedule.of([QueryPlan.resuming(spec(), resume)])
    assert schedule.take() is None
    assert schedule.finished
