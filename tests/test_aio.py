"""`all_or_none`: results in order, and a failure leaves nothing running behind it; `wait_for_event` keeps a cancel."""

from __future__ import annotations

import asyncio

import pytest

from agentstack._aio import all_or_none, wait_for_event


async def test_results_come_in_the_order_given_and_the_steps_overlap() -> None:
    running = 0
    most = 0

    async def step(value: int, delay: float) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(delay)
        running -= 1
        return value

    assert await all_or_none([step(1, 0.03), step(2, 0.01), step(3, 0.02)]) == [1, 2, 3]
    assert most == 3
    assert await all_or_none([]) == []


async def test_a_failure_cancels_the_others_before_it_is_raised() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await all_or_none([slow(), failing()])
    assert cancelled.is_set()  # already cancelled when the error reached the caller


async def test_a_stop_that_comes_with_a_wake_up_is_not_lost() -> None:
    """Python 3.11's `asyncio.wait_for` returned when its event was set a loop turn before the cancel, and the
    cancel was gone: an API worker told to stop as its run ended waited out its idle hour (a test hung)."""
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_for_event(event, 3600))
    for _ in range(3):
        await asyncio.sleep(0)  # it waits on the event
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
