"""The audit log: every request at the door of both servers, in Postgres, without a round trip on its path.

`Guard` records an `AuditEntry` when a response has been sent (or refused): when, which server, the caller's key
id (never the key), method and path, the thread and run the path names, status, latency, and the door's decision
(`unauthorized`, `forbidden`, `rate_limited`, `too_large`; None when admitted), and the personal data the
request held, by kind (the gateway's PII policy; never the values). Recording appends to a list; a
background task writes what gathered in one COPY every `flush_s` (or as soon as `batch` entries wait), so a
request never waits for the audit. Closing the log (the server's clean stop) writes what is left. Entries older
than `retention_days` are deleted by the flusher once an hour.

`agentstack audit [--key ID] [--since 1h] [--thread ID] [--json]` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from agentstack._aio import wait_for_event

__all__ = ["AuditEntry", "AuditLog"]

_log = logging.getLogger(__name__)
_IDS = re.compile(r"^/threads/(?P<thread>[^/]+)(?:/runs/(?P<run>[^/]+))?")
_MOST_PENDING = 100_000  # entries kept in memory while they cannot be written

_COLUMNS = (
    "at", "server", "key_id", "method", "path", "thread_id", "run_id", "status", "latency_ms", "decision", "findings",
    "tokens", "cost_usd",
)  # fmt: skip


@dataclass(frozen=True)
class AuditEntry:
    server: str
    key_id: str | None
    method: str
    path: str
    status: int
    latency_ms: float
    decision: str | None = None
    findings: dict[str, int] | None = None  # personal data in the request, by kind: never the values
    tokens: int | None = None  # what the model used for it (the gateway reads the reply's usage)
    cost_usd: float | None = None  # what that cost, by the gateway's price table
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def thread_id(self) -> str | None:
        found = _IDS.match(self.path)
        return found["thread"] if found and found["thread"] not in ("search", "count") else None

    @property
    def run_id(self) -> str | None:
        found = _IDS.match(self.path)
        return found["run"] if found and found["run"] not in (None, "stream", "wait") else None

    def row(self) -> tuple[Any, ...]:
        values = asdict(self) | {"thread_id": self.thread_id, "run_id": self.run_id}
        values["findings"] = Jsonb(self.findings) if self.findings else None
        return tuple(_text(values[c]) for c in _COLUMNS)


class AuditLog:
    """Entries gathered in memory and written in batches (see the module docstring)."""

    def __init__(self, pool: Any, *, flush_s: float = 1.0, batch: int = 500, retention_days: float = 90) -> None:
        self.pool = pool
        self.flush_s, self.batch, self.retention_days = flush_s, batch, retention_days
        self._pending: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._swept_at = -float("inf")
        self.dropped = 0  # entries not kept while the database was away and the backlog full (logged)

    def record(self, entry: AuditEntry) -> None:
        if len(self._pending) >= _MOST_PENDING:  # the database has been away long: memory is not given up for it
            self.dropped += 1
            return
        self._pending.append(entry)
        if len(self._pending) >= self.batch:
            self._wake.set()

    async def __aenter__(self) -> AuditLog:
        self._task = asyncio.create_task(self._flushing(), name="write the audit log")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()  # a clean stop loses nothing, unless the database is gone: then it says so
        except Exception as exc:
            _log.warning("the audit log lost %d entries at the stop: %s", len(self._pending), exc)

    async def flush(self) -> int:
        """Write what has gathered, in one COPY; how many entries."""
        entries, self._pending = self._pending, []
        if not entries:
            return 0
        try:
            async with (
                self.pool.connection() as conn,
                conn.cursor() as cur,
                cur.copy(f"COPY agentstack_audit ({', '.join(_COLUMNS)}) FROM STDIN") as copy,
            ):
                for n, entry in enumerate(entries, 1):
                    await copy.write_row(entry.row())
                    if n % 32 == 0:  # formatting rows holds the event loop: let requests in between
                        await asyncio.sleep(0)
        except Exception:
            self._pending[:0] = entries  # kept for the next flush: the database may be back by then
            raise
        return len(entries)

    async def _flushing(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wait_for_event(self._wake, self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
                if loop.time() - self._swept_at > 3600:
                    await self._sweep()
                    self._swept_at = loop.time()
            except Exception as exc:  # logged and retried: the audit must not take the server down
                _log.warning(
                    "the audit log could not be written (%d entries wait, %d dropped): %s",
                    len(self._pending), self.dropped, exc,
                )  # fmt: skip

    async def _sweep(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM agentstack_audit WHERE at < now() - make_interval(secs => %s)",
                (self.retention_days * 86400,),
            )

    async def read(
        self,
        *,
        key_id: str | None = None,
        since_s: float | None = None,
        thread_id: str | None = None,
        limit: int = 1000,
    ) -> Sequence[dict[str, Any]]:
        """Entries, newest first."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"""SELECT {", ".join(_COLUMNS)} FROM agentstack_audit
WHERE (%(key)s::text IS NULL OR key_id = %(key)s)
  AND (%(since)s::float IS NULL OR at >= now() - make_interval(secs => %(since)s))
  AND (%(thread)s::text IS NULL OR thread_id = %(thread)s)
ORDER BY at DESC, id DESC LIMIT %(limit)s""",
                    {"key": key_id, "since": since_s, "thread": thread_id, "limit": limit},
                )
            ).fetchall()
        return [dict(r) for r in rows]


def _text(value: Any) -> Any:
    """What a client put in a path, as Postgres can hold it: no NUL character, at most 2,000 characters (one
    entry that cannot be written must not hold back the batch)."""
    return value.replace("\x00", "\\0")[:2000] if isinstance(value, str) else value
