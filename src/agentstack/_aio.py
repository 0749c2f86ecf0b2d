"""Running awaitables together without leaving any behind, and waiting without losing a cancel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable
from typing import TypeVar

__all__ = ["all_or_none", "wait_for_event"]

T = TypeVar("T")


async def all_or_none(steps: Iterable[Awaitable[T]]) -> list[T]:
    """Run `steps` together and return their results in order; when one fails, cancel the others and wait for
    them before raising.

    `asyncio.gather` would leave the others running: a replica still spawning escapes the fleet's stop (an
    orphan), and a judge call keeps a model slot busy for a score nobody will read.
    """
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def wait_for_event(event: asyncio.Event | None, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed (just the wait, without an event).

    Not `asyncio.wait_for`: on Python 3.11 it returns normally when its event is set in the loop turns before
    a cancel reaches it, and the cancel is gone; a worker told to stop just as a run was queued then waited out
    another idle period (an hour, in a test that hung). `asyncio.timeout` keeps the cancel.
    """
    if event is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
