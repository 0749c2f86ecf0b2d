"""Wake-ups from Postgres: one `LISTEN` connection per server process, shared by its workers and its streams.

The queue notifies (`pg_notify`, delivered when the writing transaction commits, to every process on the
database) on three channels: `agentstack_runs` when a thread's runs change (a run was queued, finished or given
back: work may be claimable), `agentstack_events` with a run id when the run has a new event or has ended,
`agentstack_ended` with a run id when it has ended (what a `wait` waits for: not every event), and
`agentstack_cancels` with run ids when a cancel is asked for. A worker waiting for work, a stream waiting for
its run's next event and a lease renewal waiting to see a cancel each wait on the matching wake-up instead of
polling Postgres.

Correctness never rests on a notification: every waiter also wakes after its timeout and looks again, so a
notification lost while the connection was down costs latency, not a run. After (re)connecting, everyone is
woken once to look again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from weakref import WeakValueDictionary

import psycopg

__all__ = ["QueueNotifications"]

_log = logging.getLogger(__name__)

CHANNELS = ("agentstack_runs", "agentstack_events", "agentstack_cancels", "agentstack_ended")


def _held(waiters: WeakValueDictionary[str, asyncio.Event], run_id: str) -> asyncio.Event:
    event = waiters.get(run_id)
    if event is None:
        event = waiters[run_id] = asyncio.Event()
    return event


class QueueNotifications:
    """The process's wake-ups. Take the event *before* looking in Postgres, then wait on it if there was
    nothing: a notification that arrives in between has already set it."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._work = asyncio.Event()
        # Weak: a run's wake-up lives as long as someone waits on it, not as long as the server (most runs end
        # with no notification for a waiter that looked, found the run over, and left).
        self._runs: WeakValueDictionary[str, asyncio.Event] = WeakValueDictionary()
        self._cancels: WeakValueDictionary[str, asyncio.Event] = WeakValueDictionary()
        self._ended: WeakValueDictionary[str, asyncio.Event] = WeakValueDictionary()
        self.connected = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def listening(cls, pool: Any) -> AsyncIterator[QueueNotifications]:
        """Listen on the pool's database while the block runs (`pool.conninfo`: the same server and role)."""
        notes = cls(pool.conninfo)
        task = asyncio.create_task(notes._listen(), name="agentstack api notifications")
        try:
            yield notes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def work(self) -> asyncio.Event:
        """Set when a run may have become claimable."""
        return self._work

    def run_changed(self, run_id: str) -> asyncio.Event:
        """Set when the run has a new event, has ended or is to be cancelled."""
        return _held(self._runs, run_id)

    def run_ended(self, run_id: str) -> asyncio.Event:
        """Set when the run has ended (or may have: a cancel was asked for it)."""
        return _held(self._ended, run_id)

    def cancel_asked(self, run_id: str) -> asyncio.Event:
        """Set when a cancel is asked for the run."""
        return _held(self._cancels, run_id)

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == "agentstack_runs":
            self._work, woken = asyncio.Event(), self._work
            woken.set()
            return
        for run_id in payload.split(","):
            if channel == "agentstack_cancels" and (cancel := self._cancels.pop(run_id, None)) is not None:
                cancel.set()
            if channel in ("agentstack_ended", "agentstack_cancels") and (end := self._ended.pop(run_id, None)):
                end.set()
            if channel != "agentstack_ended" and (changed := self._runs.pop(run_id, None)) is not None:
                changed.set()

    def _wake_all(self) -> None:
        self._dispatch("agentstack_runs", "")
        for waiters in (self._runs, self._cancels, self._ended):
            for event in list(waiters.values()):
                event.set()
            waiters.clear()

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    self.connected.set()
                    self._wake_all()  # what was notified while nobody listened: everyone looks again
                    delay = 0.5
                    async for note in conn.notifies():
                        self._dispatch(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres away: waiters fall back to their timeouts meanwhile
                self.connected.clear()
                _log.warning("agent server notifications: %s; listening again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
