"""`Guard`: the ASGI middleware at the door of the agent server and the gateway, in the order it checks:
the body's size (413), who is calling (401: `_auth`), what the key allows (403: admin routes, read-only keys),
and its request rate (429: `_limits`). A refusal has the server's own error shape; nothing reaches the app.
Every request but the open ones (health checks) is then recorded in the audit log (`_audit`), refused or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from starlette.datastructures import Headers

from agentstack.safety._audit import AuditEntry, AuditLog
from agentstack.safety._auth import Authenticator, Caller, Refused, presented_key
from agentstack.safety._limits import Limiter

__all__ = ["Door", "Guard"]

ASGIApp = Callable[..., Any]
_DECISIONS = {401: "unauthorized", 402: "over_budget", 403: "forbidden", 413: "too_large", 429: "rate_limited"}


@dataclass(frozen=True)
class Door:
    """What a server checks its callers with: who they are, how fast they may come, where it writes it down."""

    auth: Authenticator
    limiter: Limiter | None = None
    audit: AuditLog | None = None


class Guard:
    """ASGI middleware: the caller of every HTTP request in `scope["state"]["caller"]` (None: an open server), or
    the request refused with `error(status, message)` as the response body. `door_of` gives the door when the
    first request comes (an app's lifespan opens its database after the app is built).

    `open_paths` need no key (health checks); `admin_paths` need an admin key; `reads(method, path)` says
    which requests a read-only key may make. `server` names it in the 503 of a key store that fails. A body
    over `max_body_bytes` is a 413 before anything else is read (one sent without a length is read up to it)."""

    def __init__(
        self,
        app: ASGIApp,
        door_of: Callable[[], Door],
        *,
        error: Callable[[int, str], dict[str, Any]],
        reads: Callable[[str, str], bool],
        open_paths: frozenset[str] = frozenset(),
        admin_paths: frozenset[str] = frozenset(),
        server: str = "the server",
        max_body_bytes: int | None = None,
    ) -> None:
        self.app, self.door_of, self.error, self.reads = app, door_of, error, reads
        self.server = server
        self.max_body_bytes = max_body_bytes
        self.open_paths, self.admin_paths = open_paths, admin_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        started = time.perf_counter()
        answered: list[int] = []
        send = _watching(send, answered)
        caller = None
        door = self.door_of()
        try:
            receive = await self._bounded(headers, receive)
            caller = await door.auth.caller(presented_key(headers))
            if caller is not None:
                if path in self.admin_paths and not caller.admin:
                    raise Refused(403, f"{path} needs an admin key (key {caller.key_id} is not one)")
                if caller.read_only and not self.reads(method, path):
                    raise Refused(403, f"key {caller.key_id} is read-only: it cannot {method} {path}")
                if caller.rpm and door.limiter is not None:
                    decision = await door.limiter.admit(caller.key_id, caller.rpm)
                    if not decision.admitted:
                        raise Refused(
                            429,
                            f"key {caller.key_id} is over its limit of {caller.rpm} requests a minute: retry in "
                            f"{decision.retry_after_s:.1f} s",
                            headers=decision.headers(),
                        )
                    send = _with_headers(send, decision.headers())
        except Refused as refused:
            await self._refuse(refused, send)
            self._audit(caller, method, path, refused.status, started, _DECISIONS.get(refused.status))
            return
        except psycopg.Error as exc:  # the key store's database: the client may retry
            await self._refuse(Refused(503, f"{self.server}'s database failed: {type(exc).__name__}: {exc}"), send)
            self._audit(caller, method, path, 503, started, "unavailable")
            return
        scope.setdefault("state", {})["caller"] = caller
        try:
            await self.app(scope, receive, send)
        finally:
            state = scope["state"]  # what the app found in the request (by kind), the tokens and cost of the reply
            status = answered[0] if answered else 500
            used = (state.get("findings") or None, state.get("tokens"), state.get("cost_usd"))
            self._audit(caller, method, path, status, started, None, *used)

    def _audit(
        self,
        caller: Caller | None,
        method: str,
        path: str,
        status: int,
        started: float,
        decision: str | None,
        findings: dict[str, int] | None = None,
        tokens: int | None = None,
        cost_usd: float | None = None,
    ) -> None:
        audit = self.door_of().audit
        if audit is not None:
            latency_ms = (time.perf_counter() - started) * 1000
            key_id = caller.key_id if caller is not None else None
            entry = AuditEntry(
                self.server, key_id, method, path, status, latency_ms, decision, findings, tokens, cost_usd
            )
            audit.record(entry)

    async def _bounded(self, headers: Headers, receive: Any) -> Any:
        """`receive`, once the body is known to fit `max_body_bytes` (else `Refused` 413)."""
        limit = self.max_body_bytes
        if limit is None:
            return receive
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise Refused(400, "the request's Content-Length is not a number of bytes")
            if int(length) > limit:
                raise Refused(413, f"the request body is {int(length)} bytes; this server takes at most {limit}")
            return receive
        if "transfer-encoding" not in headers:
            return receive  # no body
        chunks: list[bytes] = []
        size = 0
        while True:  # a body sent without its length: read it up to the limit, then hand it on
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                raise Refused(413, f"the request body is over {limit} bytes, the most this server takes")
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def _refuse(self, refused: Refused, send: Any) -> None:
        body = orjson.dumps(self.error(refused.status, refused.message))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if refused.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="agentstack"'))
        headers += refused.headers
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _watching(send: Any, answered: list[int]) -> Any:
    """`send`, noting the response's status in `answered` as it starts."""

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answered.append(int(message["status"]))
        await send(message)

    return sending


def _with_headers(send: Any, extra: list[tuple[bytes, bytes]]) -> Any:
    """`send`, adding `extra` headers to the response's start (the X-RateLimit-* of an admitted request)."""

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending
