"""Who is calling: the key a request presents, checked against the key store, for the agent server and the gateway.

A key comes in `x-api-key` (what `langgraph_sdk` sends) or `Authorization: Bearer` (what `openai` sends). The
rules, the same for both servers: until the first key is made on the database, a server on a loopback address
is open (one developer's machine; `agentstack api` and `serve` refuse a wider address with no key, and such a
server is never open); once a key was made, every request but the health check needs a valid one (401
otherwise; revoking every key does not open the server again), and a key may do only what it allows (403: a
write with a read-only key, an admin route with a non-admin key).

A key is verified with scrypt once (tens of milliseconds), then remembered by the SHA-256 of what was presented,
so a request costs a dictionary lookup. What is remembered is checked against Postgres every half `refresh_s`
by a background task (one query; a request waits for it only the first time, or when the task fell behind): a
key revoked, rotated or expired there stops working on every server within a second, and the first key created
closes an open server as fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agentstack.safety._keys import ApiKey, KeyStore, parse_key

if TYPE_CHECKING:
    from agentstack.safety._jwt import JwtVerifier

__all__ = ["Authenticator", "Caller", "Refused", "caller_of", "presented_key", "visible_to"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """The key a request came with (never its secret)."""

    key_id: str
    name: str
    admin: bool
    read_only: bool
    assistants: tuple[str, ...] | None  # the graphs it may run and see; None: all
    rpm: int | None = None  # requests a minute (`_limits.Limiter`); None: no limit
    tpm: int | None = None  # model tokens a minute (the gateway's); None: no limit
    max_runs: int | None = None  # runs unfinished at once (the agent server's); None: no limit
    budget: tuple[float, str] | None = None  # (USD, period) the gateway lets it spend; None: no budget

    def may_use(self, graph_id: str) -> bool:
        return self.assistants is None or graph_id in self.assistants

    @property
    def owner(self) -> str | None:
        """Whose threads it sees: its own, or (admin) everyone's (None)."""
        return None if self.admin else self.key_id


class Refused(Exception):
    """A request the key check turns away: its HTTP status and what the caller is told."""

    def __init__(self, status: int, message: str, *, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class Authenticator:
    """Checks presented keys against a `KeyStore`, remembering verified ones (see the module docstring)."""

    def __init__(
        self, store: KeyStore, *, refresh_s: float = 1.0, required: bool = False, jwt: JwtVerifier | None = None
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.jwt = jwt  # an identity provider's tokens, besides the keys
        self.required = required or jwt is not None  # never open: other machines reach it, or tokens are checked
        self._known: dict[str, tuple[bytes, ApiKey]] = {}  # key id -> (sha256 of the whole key, the key)
        self._keys = 0
        self._checked_at = -float("inf")
        self._refreshing = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    async def caller(self, presented: str | None) -> Caller | None:
        """The caller `presented` identifies; None while the server is open (no key was ever made here, and it is
        not `required`): then whatever a client sends is ignored, as `openai` always sends something.

        Raises `Refused` (401) for a missing, malformed, unknown, wrong, revoked or expired key."""
        await self._refresh()
        if self._keys == 0 and not self.required:
            return None
        if presented is None:
            raise Refused(401, "this server needs an API key: send it in x-api-key or Authorization: Bearer")
        if self.jwt is not None and looks_like_jwt(presented.strip()):
            return self.jwt.caller(presented.strip())
        parsed = parse_key(presented)
        if parsed is None:
            raise Refused(401, "the API key is not one of this server's (ask_<id>_<secret>)")
        key_id, secret = parsed
        digest = hashlib.sha256(presented.strip().encode()).digest()
        known = self._known.get(key_id)
        if known is not None and hmac.compare_digest(known[0], digest):
            key = known[1]
        else:
            found = await self.store.verify(key_id, secret)
            if found is None:
                raise Refused(401, f"API key {key_id} is not valid")
            key = found
            self._known[key_id] = (digest, key)
        if key.revoked_at is not None:
            raise Refused(401, f"API key {key_id} was revoked")
        if not key.active(datetime.now(UTC)):
            raise Refused(401, f"API key {key_id} has expired")
        budget = (key.budget_usd, key.budget_period) if key.budget_usd and key.budget_period else None
        return Caller(
            key.key_id, key.name, key.admin, key.read_only, key.assistants, key.rpm, key.tpm, key.max_runs, budget
        )

    async def aclose(self) -> None:
        """Stop refreshing in the background (a server's stop)."""
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None

    async def _refresh(self) -> None:
        """Up to date within `refresh_s`: the first request waits for the first look; after it a background task
        looks every `refresh_s`, so requests wait for Postgres only when that task fell behind (twice over)."""
        age = time.monotonic() - self._checked_at
        if age < self.refresh_s or (age < 2 * self.refresh_s and self._background is not None):
            return
        await self._look()
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self._looking(), name="refresh the API keys")

    async def _looking(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s / 2)
            try:
                await self._look()
            except Exception as exc:  # a request that finds the state stale looks itself, and fails with a 503
                _log.warning("the API keys could not be refreshed: %s", exc)

    async def _look(self) -> None:
        async with self._refreshing:
            if time.monotonic() - self._checked_at < self.refresh_s / 2:
                return  # looked while this one waited
            made, versions = await self.store.state(list(self._known))
            for key_id, (_digest, key) in list(self._known.items()):
                if versions.get(key_id) != key.version:
                    del self._known[key_id]  # rotated, revoked or deleted: verified again (and refused) next time
            self._keys = made
            self._checked_at = time.monotonic()


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts, the first a JSON header: a JWT, to be verified as one rather than as a key."""
    return token.startswith("eyJ") and token.count(".") == 2


def caller_of(request: Any) -> Caller | None:
    """The caller `Guard` found for a Starlette request; None on an open server (or with no check)."""
    return getattr(request.state, "caller", None)


def visible_to(request: Any) -> str | None:
    """Whose threads the request's caller sees: its key's, or (an admin key, an open server) everyone's (None)."""
    caller = caller_of(request)
    return caller.owner if caller is not None else None


def presented_key(headers: Any) -> str | None:
    """The key in `x-api-key`, else in `Authorization: Bearer`; None when neither is sent."""
    key = headers.get("x-api-key")
    if key:
        return str(key)
    authorization = headers.get("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
