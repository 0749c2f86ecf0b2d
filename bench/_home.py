"""Shared by the benchmarks that open a whole stack: a throwaway home, and its embedded Postgres with it."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agentstack.checkpoint import LocalPostgres
from agentstack.config import Settings


@asynccontextmanager
async def throwaway_settings() -> AsyncIterator[Settings]:
    """Settings on a temporary home. The embedded Postgres outlives its process by design (its cluster lives
    outside the home when run as root), so it is destroyed explicitly, or every run would leave one behind."""
    with tempfile.TemporaryDirectory(prefix="agentstack-bench-") as home:
        settings = Settings(home=Path(home))
        try:
            yield settings
        finally:
            await asyncio.to_thread(LocalPostgres.from_settings(settings).destroy)
