"""What the gateway does with a model request between its door (`Guard`) and the fleet, in order, and what it
settles once the reply has told its usage.

Before: what one request may ask (`RequestLimits`: its text, its max_tokens), personal data (`PiiPolicy`:
masked or refused), prompt injection in the user's and tools' messages (`InjectionPolicy`), the key's tokens a
minute (admitted on an estimate) and its budget (`Spend`). Each refusal is an OpenAI-shaped error naming the
limit, so `openai` raises it as it would a hosted API's. After: the reply's tokens and cost go to the audit (the
request's state), the estimate is settled against the real usage and the cost added to the key's spend, after
the response, off its path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from agentstack.config import Settings
from agentstack.safety._audit import AuditLog
from agentstack.safety._auth import Authenticator, caller_of
from agentstack.safety._guard import Door
from agentstack.safety._injection import InjectionBlocked, InjectionPolicy, strings_in
from agentstack.safety._limits import Limiter, RequestLimits, RequestRefused, Spend, request_limits
from agentstack.safety._pii_policy import PiiBlocked, PiiPolicy, pii_scanner

__all__ = ["Admitted", "GatewayPolicy", "openai_error"]

_pending: set[asyncio.Task[None]] = set()  # settlements in flight (kept until done: asyncio holds tasks weakly)


@dataclass
class Admitted:
    """A request the policy lets through: the body to send, its PII placeholders, and what to settle after."""

    body: bytes
    mapping: dict[str, str] = field(default_factory=dict)
    model: str = ""
    metered: tuple[Limiter, str, int, int] | None = None  # limiter, key id, its tokens a minute, the estimate
    budgeted: tuple[str, str] | None = None  # key id, its budget's period


@dataclass(frozen=True)
class GatewayPolicy:
    door: Door | None = None
    spend: Spend = field(default_factory=lambda: Spend(None, {}))
    limits: RequestLimits = field(default_factory=RequestLimits)
    pii: PiiPolicy = field(default_factory=PiiPolicy)
    injection: InjectionPolicy = field(default_factory=lambda: InjectionPolicy("off"))

    @classmethod
    def create(
        cls,
        auth: Authenticator | None = None,
        *,
        audit: AuditLog | None = None,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        limits: RequestLimits | None = None,
        pii: PiiPolicy | None = None,
        injection: InjectionPolicy | None = None,
    ) -> GatewayPolicy:
        """The policy of a gateway whose callers `auth` checks (None: no door), its rates and spend in the keys'
        database."""
        door = Door(auth, Limiter(auth.store.pool), audit) if auth is not None else None
        spend = Spend(auth.store.pool if auth is not None else None, prices or {})
        return cls(door, spend, limits or RequestLimits(), pii or PiiPolicy(), injection or InjectionPolicy("off"))

    @classmethod
    def from_settings(cls, settings: Settings, auth: Authenticator, audit: AuditLog) -> GatewayPolicy:
        pii = PiiPolicy(
            settings.pii, pii_scanner(settings), settings.pii_restore, settings.pii_models,
            redact_output=settings.pii_redact_output,
        )  # fmt: skip
        return cls.create(
            auth, audit=audit, prices=settings.prices, limits=request_limits(settings), pii=pii,
            injection=InjectionPolicy(settings.injection),
        )  # fmt: skip

    async def admit(self, request: Request, body: bytes) -> Admitted | JSONResponse:
        """The request as the model may see it, or the refusal to answer with."""
        try:
            body = _bounded(body, request.url.path, self.limits)
            masked = self.pii.inbound(body)
        except RequestRefused as refused:
            return _error(400, str(refused), refused.code)
        except PiiBlocked as blocked:
            request.state.findings = dict(blocked.kinds)
            return _error(400, str(blocked), "pii_blocked")
        request.state.findings = dict(masked.found)
        try:  # the user's words and the tools' results: where an injection comes in
            if self.injection.check(_spoken(masked.body), what="a message") is not None:
                request.state.findings |= {"injection": 1}
        except InjectionBlocked as blocked:
            request.state.findings |= {"injection": 1}
            return _error(400, str(blocked), "injection_blocked")
        admitted = Admitted(masked.body, masked.mapping, str(_requested(masked.body).get("model")))
        caller = caller_of(request)
        if caller is None:
            return admitted
        if caller.tpm and self.door is not None and self.door.limiter is not None:
            estimate = _estimated_tokens(admitted.body)
            decision = await self.door.limiter.admit(caller.key_id, caller.tpm, kind="tpm", weight=estimate)
            if not decision.admitted:
                message = (
                    f"key {caller.key_id} is over its limit of {caller.tpm} tokens a minute (this request needs "
                    f"about {estimate}): retry in {decision.retry_after_s:.1f} s"
                )
                headers = {k.decode(): v.decode() for k, v in decision.headers()}
                return _error(429, message, "tokens_per_minute", headers=headers, kind="rate_limit_error")
            admitted.metered = (self.door.limiter, caller.key_id, caller.tpm, estimate)
        if caller.budget is not None:
            usd, period = caller.budget
            if self.spend.cost(admitted.model, 0, 0) is None:
                message = f"model {admitted.model!r} has no price, and key {caller.key_id} spends within a budget"
                return _error(402, message + ": give it one in AGENTSTACK_PRICES", "budget_exceeded")
            spent = await self.spend.spent(caller.key_id, period)
            if spent >= usd:
                message = f"key {caller.key_id} spent ${spent:.4f} of its ${usd:g} a {period}"
                return _error(402, message, "budget_exceeded", kind="insufficient_quota")
            admitted.budgeted = (caller.key_id, period)
        return admitted

    def settle(self, request: Request, admitted: Admitted, reported: dict[str, int]) -> None:
        """The reply told its usage (`reported`, {} if it did not): into the audit, and settled after it."""
        used = reported.get("total_tokens")
        cost = self.spend.cost(admitted.model, reported.get("prompt_tokens", 0), reported.get("completion_tokens", 0))
        request.state.tokens = used
        request.state.cost_usd = cost if reported else None
        work = []
        if admitted.metered is not None and used is not None:  # the estimate was charged: now the real figure
            limiter, key_id, tpm, estimate = admitted.metered
            work.append(limiter.settle(key_id, tpm, kind="tpm", units=used - estimate))
        if admitted.budgeted is not None and cost:
            work.append(self.spend.add(*admitted.budgeted, cost))
        for settling in work:
            _pending.add(task := asyncio.create_task(settling))
            task.add_done_callback(_pending.discard)


def openai_error(status: int, message: str, code: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """An error as OpenAI's API writes it (what `openai` raises as AuthenticationError, RateLimitError...)."""
    codes = {401: "invalid_api_key", 403: "permission_denied", 413: "request_too_large", 429: "rate_limit_exceeded"}
    code = code or codes.get(status, "error")
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _error(
    status: int, message: str, code: str, *, headers: dict[str, str] | None = None, kind: str | None = None
) -> JSONResponse:
    return JSONResponse(openai_error(status, message, code, kind), status, headers)


def _requested(body: bytes) -> dict[str, Any]:
    """The request's JSON object ({} for anything else: the model server refuses it with its own error)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return request if isinstance(request, dict) else {}


def _bounded(body: bytes, path: str, limits: RequestLimits) -> bytes:
    """The body within `limits` (a completion that sets no max_tokens gets the ceiling); `RequestRefused`."""
    request = _requested(body)
    if not request:
        return body
    if path.endswith("completions"):
        messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
        texts = strings_in([[m.get("content") for m in messages], request.get("prompt")], limit=100_000)
        return orjson.dumps(request) if limits.bounded(request, texts) else body
    said = strings_in([request.get("input"), request.get("query"), request.get("documents")], limit=100_000)
    limits.check_input(said, what="the request")
    return body


def _spoken(body: bytes) -> list[str]:
    """The texts of a chat request's user and tool messages (what a caller or a tool put there), or a prompt."""
    request = _requested(body)
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict) and m.get("role") in ("user", "tool")]
    return strings_in([m.get("content") for m in messages] + [request.get("prompt")])


def _estimated_tokens(body: bytes) -> int:
    """What a request will use, for its admission: its text's characters / 4, plus what it lets the model write
    (`max_tokens`; 256 when it does not say)."""
    request = _requested(body)
    if not request:
        return 1
    prompt = sum(len(t) for t in strings_in([request.get("messages"), request.get("prompt")], limit=10_000)) // 4
    allowed = request.get("max_completion_tokens") or request.get("max_tokens") or 256
    return max(1, prompt + (int(allowed) if isinstance(allowed, int | float) else 256))
