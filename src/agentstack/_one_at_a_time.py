"""`OneAtATime`: an HTTP transport whose requests reach the model server one at a time.

Greedy decoding repeats only while the numbers under it do. llama.cpp (and vLLM, unless it is started batch
invariant) computes a request batched with others, or on top of a cached prompt prefix, with other kernels and
summation orders than the same request alone, and a greedy model's near ties then flip from run to run: on the
docs dataset the CPU Gemma's judged scores moved in 6 of 8 items over three reruns, also at `--concurrency 1`
(a metric asks several things at once). Asked one at a time, without a cached prefix, they moved in none. The
stack's exact mode (`Stack(exact=True)`, `agentstack eval run --exact`) sends its model calls through one of
these.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx

__all__ = ["OneAtATime"]


class OneAtATime(httpx.AsyncBaseTransport):
    """Sends through `inner`, one request at a time: a response keeps the turn until it is closed (a streamed
    reply until its last chunk is read or the stream is closed), so no two replies are ever computed together."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self._turn = asyncio.Lock()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._turn.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._turn.release()
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Turn(response.stream, self._turn.release),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Turn(httpx.AsyncByteStream):
    """A response body that gives the turn back when it is closed (once)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
