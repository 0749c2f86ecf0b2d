"""How a run reaches its client: its stored events as server-sent events (stream, rejoin with `Last-Event-ID`),
or its final values once it has ended (wait, join), woken by Postgres's notifications (`_notify`) and looking
again on its own when they do not come. A part of `_app._Api`, which gives it the queue and the notifications.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse

from agentstack._aio import wait_for_event
from agentstack.api._notify import QueueNotifications
from agentstack.api._runs import FINAL, Run, RunQueue, StreamEvent
from agentstack.api._wire import dump_json, run_locations

__all__ = ["RunReading"]

_HEARTBEAT_S = 5.0  # a comment line (SSE) or a newline (wait) this often keeps proxies and clients reading


class RunReading:
    queue: RunQueue
    notes: QueueNotifications
    poll_s: float

    def _poll_s(self) -> float:
        """How long a stream or a wait sleeps before looking again without being notified: long while
        notifications arrive (they wake it), `poll_s` while they do not."""
        return 1.0 if self.notes.connected.is_set() else self.poll_s

    async def _events(self, run: Run, after: int) -> AsyncIterator[StreamEvent | None]:
        """The run's events after `after` until it has ended; None whenever a heartbeat is due."""
        last, beat = after, time.monotonic()
        while True:
            changed = self.notes.run_changed(run.run_id)
            events = await self.queue.events_after(run.run_id, last)
            for event in events:
                last = event.seq
                yield event
            if events:  # look again when the next event, or the run's end, is notified: one query per batch
                if self.notes.connected.is_set():
                    await wait_for_event(changed, self._poll_s())
                continue
            if (await self.queue.get_run(run.thread_id, run.run_id)).status in FINAL:
                for event in await self.queue.events_after(run.run_id, last):  # written before it ended
                    yield event
                return
            if time.monotonic() - beat > _HEARTBEAT_S:
                beat = time.monotonic()
                yield None
            await wait_for_event(changed, self._poll_s())

    def _sse(
        self,
        run: Run,
        *,
        after: int,
        modes: list[str] | None,
        then: Callable[[], None] | None = None,
        gone: Callable[[], None] | None = None,
    ) -> StreamingResponse:
        """The run's events as SSE; `then` runs when the response ends, `gone` when the client left first."""

        async def frames() -> AsyncIterator[bytes]:
            ended = False
            try:
                async for event in self._events(run, after):
                    if event is None:
                        yield b": heartbeat\r\n\r\n"
                    elif modes is None or event.event in ("metadata", "error") or _mode(event.event) in modes:
                        data = dump_json(event.data)
                        yield b"event: %s\r\ndata: %s\r\nid: %d\r\n\r\n" % (event.event.encode(), data, event.seq)
                ended = True
            finally:
                if gone is not None and not ended:
                    gone()
                if then is not None:
                    then()

        if then is not None:  # stateless: nothing to rejoin once the thread is forgotten
            headers = {"Content-Location": f"/runs/{run.run_id}"}
        else:
            headers = run_locations(run) | {"Location": f"/threads/{run.thread_id}/runs/{run.run_id}/stream"}
        headers |= {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(frames(), media_type="text/event-stream; charset=utf-8", headers=headers)

    def _result(
        self, run: Run, *, then: Callable[[], None] | None = None, gone: Callable[[], None] | None = None
    ) -> StreamingResponse:
        """The run's final values once it has ended, after newline keep-alives, as the reference's wait/join."""

        async def body() -> AsyncIterator[bytes]:
            ended = False
            try:  # woken by the run's end only, not by each of its events; a newline keeps the client's read alive
                while True:
                    done = self.notes.run_ended(run.run_id)
                    if (await self.queue.get_run(run.thread_id, run.run_id)).status in FINAL:
                        break
                    await wait_for_event(done, _HEARTBEAT_S if self.notes.connected.is_set() else self.poll_s)
                    yield b"\n"
                ended = True
                final = await self.queue.final_events(run.run_id)
            finally:
                if gone is not None and not ended:
                    gone()
                if then is not None:
                    then()  # after the values were read: a stateless run's thread goes with its events
            if "error" in final:
                yield dump_json({"__error__": final["error"].data})
                return
            values = final["values"].data if "values" in final else None
            paused = final.get("interrupt")
            if paused is not None and ("values" not in final or paused.seq > final["values"].seq):
                values = {**(values or {}), "__interrupt__": paused.data["__interrupt__"]}
            yield dump_json(values if values is not None else {})

        if then is not None:
            headers = {"Content-Location": f"/runs/{run.run_id}"}
        else:
            headers = run_locations(run) | {"Location": f"/threads/{run.thread_id}/runs/{run.run_id}/join"}
        return StreamingResponse(body(), media_type="application/json", headers=headers)


def _mode(event: str) -> str:
    """The stream mode an event belongs to: `updates|sub:1` -> updates, `messages/partial` -> messages."""
    return event.split("|")[0].split("/")[0]
