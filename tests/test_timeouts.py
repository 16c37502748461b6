import pytest

from fetcher.http.timeouts import AdaptiveTimeout


def test_ceiling_until_enough_samples() -> None:
    """Before min_samples responses, the configured timeout applies."""
    timeouts = AdaptiveTimeout(30.0, min_samples=10)
    for _ in range(9):
        timeouts.observe(0.1)
    assert timeouts.for_attempt() == 30.0


def test_adapts_to_a_multiple_of_p99_with_a_floor() -> None:
    """With samples, the timeout is factor x p99, never below the floor nor above the ceiling."""
    timeouts = AdaptiveTimeout(30.0, floor_s=1.0, factor=8.0, min_samples=10)
    for i in range(100):
        timeouts.observe(0.5 if i >= 98 else 0.2)  # the slowest 2%
    assert timeouts.for_attempt() == pytest.approx(8 * 0.5)  # p99 is the slow tail
    for _ in range(100):
        timeouts.observe(0.2)  # diluted below 1% of the window
    assert timeouts.for_attempt() == pytest.approx(8 * 0.2)
    fast = AdaptiveTimeout(30.0, floor_s=1.0, factor=8.0, min_samples=10)
    for _ in range(50):
        fast.observe(0.01)
    assert fast.for_attempt() == 1.0  # the floor
    slow = AdaptiveTimeout(5.0, floor_s=1.0, min_samples=10)
    for _ in range(50):
        slow.observe(2.0)
    assert slow.for_attempt() == 5.0  # the ceiling


def test_each_timeout_doubles_the_next_allowance() -> None:
    """After timeouts, a page's next attempt gets twice as long, up to the ceiling."""
    timeouts = AdaptiveTimeout(10.0, floor_s=1.0, factor=8.0, min_samples=4)
    for _ in range(10):
        timeouts.observe(0.25)
    assert [timeouts.for_attempt(n) for n in range(4)] == [2.0, 4.0, 8.0, 10.0]
