"""What the CLI's commands on one of agentstack's stores (keys, audit, usage, experiments) share: the settings'
Postgres (the embedded one, started, when no URL is set) and the store's tables, created when missing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from agentstack.config import Settings

__all__ = ["opened_store"]


class _Store(Protocol):
    async def setup(self) -> None: ...


StoreT = TypeVar("StoreT", bound=_Store)


@asynccontextmanager
async def opened_store(settings: Settings, make: Callable[[Any], StoreT]) -> AsyncIterator[StoreT]:
    """`make(pool)` on the settings' Postgres, set up; the pool closes on the way out."""
    from agentstack.checkpoint import open_saver

    async with open_saver(settings=settings, pool_size=2) as saver:
        store = make(saver.conn)
        await store.setup()
        yield store
