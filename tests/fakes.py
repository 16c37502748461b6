"""Test doubles: a virtual clock, so waits are asserted without real sleeping."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


async def _settle() -> None:
    """Return once every other task is blocked on something.

    ``anyio.wait_all_tasks_blocked`` does the same but sleeps a real 0.1 s
    whenever a task is still runnable, which makes a run of hundreds of
    wake-ups take minutes; yielding to the loop until all are blocked does not.
    """
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not this and (waiter is None or waiter.done()):
                break
        else:
            return


class FakeClock:
    """Virtual monotonic time: ``sleep`` returns when virtual time reaches its end.

    Use ``async with clock.running():`` around the code under test; while it
    runs, whenever every other task is blocked, the clock jumps to the
    earliest pending wake-up. Nothing really sleeps.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0
        self.sleeps: list[float] = []
        self._slept = anyio.Event()

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        """Epoch seconds that move with the virtual clock."""
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        event = anyio.Event()
        self._seq += 1
        heapq.heappush(self._heap, (self.now + max(seconds, 0.0), self._seq, event))
        self._slept.set()
        await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (wakes nobody)."""
        self.now += seconds

    async def _drive(self) -> None:
        while True:
            await _settle()
            if not self._heap:
                # Block (not spin) until someone sleeps: a spinning driver would
                # look runnable to a test's own wait_all_tasks_blocked forever.
                self._slept = anyio.Event()
                await self._slept.wait()
                continue
            wake, _, event = heapq.heappop(self._heap)
            self.now = max(self.now, wake)
            event.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeClock]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drive)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
