"""What a run's input meets at the agent server before it is queued: the input's size, personal data (masked
before anything is stored, or refused), prompt-injection screening, and the key's tokens a minute and budget
(what its earlier runs were charged); and what the run keeps of the request: its caller and the caller's
trace. One place, so the run routes and the state update route apply the same rules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from agentstack.errors import BudgetError, LimitError
from agentstack.safety._auth import Caller, caller_of
from agentstack.safety._injection import InjectionPolicy, strings_in
from agentstack.safety._limits import Limiter, RequestLimits, Spend
from agentstack.safety._pii_policy import PiiBlocked, PiiPolicy

__all__ = ["RunAdmission"]


@dataclass
class RunAdmission:
    limits: RequestLimits
    pii: PiiPolicy
    injection: InjectionPolicy
    pii_secret: bytes  # the database's (`KeyStore.secret`): names placeholders alike in every worker
    limiter: Limiter
    spend: Spend

    async def admit(
        self, request: Request, body: Mapping[str, Any], names: tuple[str, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """`kwargs` (the run's stored arguments) made fit to queue for the assistant `names` (its id, its graph),
        and the run's metadata; raises the refusal (413 size, 400 personal data or injection under `block`,
        429 tokens, 402 budget)."""
        metadata = dict(body.get("metadata") or {})
        said = strings_in([body.get("input"), (body.get("command") or {}).get("resume")], limit=100_000)
        self.limits.check_input(said, what="the run's input")
        if found := self._mask_input(request, kwargs, names):  # `block` raises: a 400 naming the kinds
            metadata["pii"] = found  # by kind, never the values
        screened = self.injection.check(said, what="the run's input", names=names)  # `block` raises, naming why
        if screened is not None:  # flagged: marked on the run, counted in the audit
            metadata["injection"] = {"score": screened.score, "reasons": list(screened.reasons)}
            request.state.findings = getattr(request.state, "findings", {}) | {"injection": 1}
        caller = caller_of(request)
        if caller is not None and (caller.tpm or caller.budget):
            kwargs["charge"] = await self._admitted_usage(caller)
        if caller is not None:
            kwargs["caller"] = caller.key_id  # the trace's user
        if "traceparent" in request.headers:  # the caller's trace, kept with the run for whichever worker runs it
            kwargs["trace"] = {k: request.headers[k] for k in ("traceparent", "tracestate") if k in request.headers}
        return metadata

    def masked(self, request: Request, value: Any, names: tuple[str, ...]) -> tuple[Any, dict[str, int]]:
        """`value` (a run's input, a state update: what a caller writes into a state is input too) as it may be
        stored under the policy for `names`, and what was found in it, by kind; `PiiBlocked` under `block`. The
        kinds are the request's findings (the audit's), never the values."""
        try:
            masked_value, found = self.pii.masked_value(value, *names, secret=self.pii_secret)
        except PiiBlocked as exc:
            request.state.findings = dict(exc.kinds)
            raise
        if found:
            request.state.findings = dict(found)
        return masked_value, dict(found)

    def _mask_input(self, request: Request, kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, int]:
        """Personal data in what a run gives its graph (input, a command's update and resume value) masked in
        `kwargs` before it is stored or any model reads it: the thread keeps the placeholders (`<EMAIL_3f9a1c0b>`,
        the same for a value in every run: `PiiScanner.mask`), never the values. What was found, by kind."""
        command = dict(kwargs["command"] or {})
        given = {"input": kwargs["input"], "update": command.get("update"), "resume": command.get("resume")}
        masked_given, found = self.masked(request, given, names)
        if found:
            kwargs["input"] = masked_given["input"]
            if kwargs["command"] is not None:
                kwargs["command"] = command | {k: masked_given[k] for k in ("update", "resume") if k in command}
        return found

    async def _admitted_usage(self, caller: Caller) -> dict[str, Any]:
        """Whether the key may start a run under its tokens a minute and its budget (what its earlier runs were
        charged when they ended): refused with `LimitError` (429) or `BudgetError` (402); else what the run's
        usage is charged to when it ends."""
        if caller.tpm:
            decision = await self.limiter.admit(caller.key_id, caller.tpm, kind="tpm")
            if not decision.admitted:
                raise LimitError(
                    f"key {caller.key_id} used its {caller.tpm} tokens a minute: retry in "
                    f"{decision.retry_after_s:.1f} s",
                    fix="wait, or ask for a higher --tpm",
                )
        if caller.budget is not None:
            usd, period = caller.budget
            spent = await self.spend.spent(caller.key_id, period)
            if spent >= usd:
                raise BudgetError(
                    f"key {caller.key_id} spent ${spent:.4f} of its ${usd:g} a {period}",
                    fix=f"wait for the next {period}, or ask for a larger --budget",
                )
        return {"key_id": caller.key_id, "tpm": caller.tpm, "budget": list(caller.budget or []) or None}
