"""The fleet's HTTP side: one connection pool per flavour, borrowed by every client the fleet hands out.

The fleet creates the pools when it starts and closes them when it stops, after closing every
client it made (the chat models' too). A client only ever borrows a pool: closing one (as
`httpx.AsyncClient.aclose()` closes its transport) never closes the pool the others use.
"""

from __future__ import annotations

import weakref
from typing import Any

import httpx
import orjson

from agentstack.observability._context import trace_hooks
from agentstack.serving._backends._base import RESPONSE_FORMAT, StructuredDialect

__all__ = ["BorrowedTransport", "FleetClients"]

# No cap on connections (the replicas' own slots bound concurrency); idle ones kept a minute for the next turn.
_POOL_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=60)


class BorrowedTransport(httpx.AsyncBaseTransport):
    """Sends over a transport someone else owns, in a backend's structured-output dialect; closing it closes nothing.

    Used where requests go to one replica directly (health checks, the canary), not through the router.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, dialect: StructuredDialect = RESPONSE_FORMAT) -> None:
        self._inner = inner
        self._dialect = dialect

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._dialect != RESPONSE_FORMAT:
            request = _in_dialect(request, await request.aread(), self._dialect)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """The owner closes the inner transport."""


def _in_dialect(request: httpx.Request, body: bytes, dialect: StructuredDialect) -> httpx.Request:
    try:
        payload = orjson.loads(body) if body[:1] == b"{" else None
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return request
    rewritten = orjson.dumps(dialect.apply(payload))
    headers = request.headers.copy()
    headers["content-length"] = str(len(rewritten))
    return httpx.Request(
        request.method, request.url, headers=headers, stream=httpx.ByteStream(rewritten), extensions=request.extensions
    )


class FleetClients:
    """The pools of one running fleet and the clients made on them; `aclose` closes the clients, then the pools."""

    def __init__(self) -> None:
        self.transport = httpx.AsyncHTTPTransport(limits=_POOL_LIMITS)
        self.sync_transport = httpx.HTTPTransport(limits=_POOL_LIMITS)
        # Weak: a client its user dropped is forgotten rather than kept until the fleet stops.
        self._clients: weakref.WeakSet[httpx.AsyncClient | httpx.Client] = weakref.WeakSet()

    def async_client(self, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> httpx.AsyncClient:
        """An async client on `transport` (the router, or a `BorrowedTransport`), closed with the fleet."""
        client = httpx.AsyncClient(transport=transport, event_hooks=trace_hooks(), **kwargs)
        self._clients.add(client)
        return client

    def sync_client(self, transport: httpx.BaseTransport, **kwargs: Any) -> httpx.Client:
        """A sync client on `transport`, closed with the fleet."""
        client = httpx.Client(transport=transport, event_hooks=trace_hooks(sync=True), **kwargs)
        self._clients.add(client)
        return client

    async def aclose(self) -> None:
        for client in list(self._clients):
            if isinstance(client, httpx.AsyncClient):
                await client.aclose()
            else:
                client.close()
        self._clients.clear()
        await self.transport.aclose()
        self.sync_transport.close()
