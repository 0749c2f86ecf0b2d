"""An ASGI middleware that counts what a server answers (`Metrics.requests`, `in_flight`, `rejections`,
`request_seconds`), outermost, so refusals at the door are counted too.

The route label is the route's template (`/threads/{thread_id}/runs`), read after the app routed the request,
never the raw path: one series per route, not one per thread. An unrouted path is `(unmatched)`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

from agentstack.observability._metrics import Metrics

__all__ = ["RequestMetrics"]

# Why the door refused a request, by status (a 400 is a refusal only when the request held what is refused).
_REASONS = {401: "auth", 403: "scope", 402: "budget", 429: "limit", 413: "size"}


class RequestMetrics:
    def __init__(
        self,
        app: Any,
        metrics: Metrics,
        *,
        server: str,
        routes: Sequence[BaseRoute] = (),
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.server = server
        self.routes = list(routes)  # to name the route of a request the door refused before it was routed
        self.skip = skip  # paths not counted (`/metrics` itself, health probes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def watching(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        in_flight = self.metrics.in_flight.labels(self.server)
        in_flight.inc()
        try:
            await self.app(scope, receive, watching)
        finally:
            in_flight.dec()
            code = status[0] if status else 500
            route = getattr(scope.get("route"), "path", None) or self._route_of(scope)
            state = scope.get("state") or {}
            caller = state.get("caller")
            key = getattr(caller, "key_id", None) or "-"
            self.metrics.requests.labels(self.server, route, str(code), key).inc()
            self.metrics.request_seconds.labels(self.server, route).observe(time.perf_counter() - started)
            reason = _REASONS.get(code)
            if code == 400 and state.get("findings"):
                found = state["findings"]
                reason = "injection" if "injection" in found and len(found) == 1 else "pii"
            if reason is not None:
                self.metrics.rejections.labels(self.server, reason).inc()

    def _route_of(self, scope: dict[str, Any]) -> str:
        for route in self.routes:
            matched, _ = route.matches(scope)
            if matched is Match.FULL:
                return str(getattr(route, "path", "(unmatched)"))
        return "(unmatched)"
