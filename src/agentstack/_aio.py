"""Running awaitables together without leaving any behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

__all__ = ["all_or_none"]

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
