"""`OneAtATime`: an HTTP transport whose requests reach the model server one at a time.

Greedy decoding repeats only while the numbers under it do. llama.cpp (and vLLM, unless it is started batch
invariant) computes a request batched with others, or on top of a cached prompt prefix, with other kernels and
summation orders than the same request alone, and a greedy model's near ties then flip from run to run: the
CPU Gemma's four judged scores of 8 docs items, rescored three times, moved in 7 of the items at
`--concurrency 1` (a metric asks several things at once) and in 7 asked one at a time (cached prefixes); one
at a time and each prompt computed alone, in none, taking three times as long as at `--concurrency 4`. The
stack's exact mode (`Stack(exact=True)`, `agentstack eval run --exact`) sends its model calls through one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

__all__ = ["OneAtATime"]


class OneAtATime(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Sends through `inner` (sync calls through `sync_inner`), one request at a time: a response keeps the turn
    until it is closed (a streamed reply until its last chunk is read or the stream is closed), so no two replies
    are ever computed together. Sync calls take turns among themselves (a lock the event loop cannot wait on)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, sync_inner: httpx.BaseTransport | None = None) -> None:
        self._inner = inner
        self._sync_inner = sync_inner
        self._turn = asyncio.Lock()
        self._sync_turn = threading.Lock()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._turn.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._turn.release()
            raise
        return _holding(response, self._turn.release)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._sync_inner is None:
            raise TypeError("this OneAtATime was made without a sync transport: OneAtATime(inner, sync_inner)")
        self._sync_turn.acquire()
        try:
            response = self._sync_inner.handle_request(request)
        except BaseException:
            self._sync_turn.release()
            raise
        return _holding(response, self._sync_turn.release)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def close(self) -> None:
        if self._sync_inner is not None:
            self._sync_inner.close()


def _holding(response: httpx.Response, release: Callable[[], None]) -> httpx.Response:
    return httpx.Response(
        status_code=response.status_code,
        headers=response.headers,
        stream=_Turn(response.stream, release),
        extensions=response.extensions,
    )


class _Turn(httpx.AsyncByteStream, httpx.SyncByteStream):
    """A response body (async or sync, as the transport gave it) that gives the turn back when closed, once."""

    def __init__(self, stream: Any, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._give_back()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._give_back()

    def _give_back(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
