"""Per-key request and token rates, shared by every worker and gateway through Postgres: GCRA in one statement.

The generic cell rate algorithm keeps one timestamp per key and limit, the theoretical arrival time (TAT) of the
next request: a limit of R requests a minute spaces requests T = 60/R s apart and tolerates a burst of R (a
minute's worth) at once. A request is admitted when max(TAT, now) + T is at most a minute ahead of now, and then
that becomes the TAT; otherwise it is refused, and may retry when the TAT falls back within the minute. One
upsert decides it under the row's lock, so two servers admitting at once never admit more than the limit
together; no Redis, no window tables to sweep.

Tokens a minute use the same cell with a weight: a request is admitted with an estimate of its tokens (its
prompt's characters / 4 plus its max_tokens), and when the reply has told its real usage the difference is
charged or refunded (`settle`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentstack.config import Settings

__all__ = ["Decision", "Limiter", "RequestLimits", "RequestRefused", "Spend", "cost_usd", "request_limits"]

_WINDOW_S = 60.0

_ADMIT_SQL = """
WITH before AS (
    SELECT tat FROM agentstack_rate_limits WHERE key_id = %(key)s AND kind = %(kind)s
), admitted AS (
    INSERT INTO agentstack_rate_limits AS r (key_id, kind, tat)
    VALUES (%(key)s, %(kind)s, clock_timestamp() + make_interval(secs => %(step)s))
    ON CONFLICT (key_id, kind) DO UPDATE
    SET tat = greatest(r.tat, clock_timestamp()) + make_interval(secs => %(step)s)
    WHERE greatest(r.tat, clock_timestamp()) + make_interval(secs => %(step)s)
          <= clock_timestamp() + make_interval(secs => %(window)s)
    RETURNING tat
)
SELECT extract(epoch FROM (SELECT tat FROM admitted) - clock_timestamp()) AS ahead,
       extract(epoch FROM (SELECT tat FROM before) - clock_timestamp()) AS was_ahead
"""


@dataclass(frozen=True)
class Decision:
    """Whether a request was admitted under `limit` per minute, and what the X-RateLimit-* headers say."""

    admitted: bool
    limit: int
    remaining: int
    retry_after_s: float  # 0 when admitted
    reset_s: float  # until the limit is whole again

    def headers(self) -> list[tuple[bytes, bytes]]:
        found = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(math.ceil(self.reset_s)).encode()),
        ]
        if not self.admitted:
            found.append((b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode()))
        return found


class Limiter:
    """Request rates per key on a psycopg async pool (the key store's tables, `KeyStore.setup`)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def admit(self, key_id: str, per_minute: int, *, kind: str = "rpm", weight: int = 1) -> Decision:
        """Admit `weight` units (one request; or the tokens a request is expected to use) of `key_id` under
        `per_minute`, or refuse them (one round trip either way). A weight over the limit counts as the limit:
        one request may use a minute's worth, never more than a minute's."""
        unit = _WINDOW_S / per_minute
        step = unit * min(max(weight, 1), per_minute)
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(_ADMIT_SQL, {"key": key_id, "kind": kind, "step": step, "window": _WINDOW_S})
            ).fetchone()
        if row["ahead"] is not None:  # admitted: the TAT moved `step` further
            ahead = float(row["ahead"])
            remaining = max(0, math.floor((_WINDOW_S - ahead) / unit + 1e-9))
            return Decision(True, per_minute, remaining, 0.0, ahead)
        was_ahead = float(row["was_ahead"] or 0.0)
        retry = max(0.0, was_ahead + step - _WINDOW_S)
        return Decision(False, per_minute, 0, retry, was_ahead)

    async def charge(self, key_id: str, per_minute: int, *, kind: str, units: int) -> None:
        """Count `units` used without asking first (a run's tokens, known when it ends): the key's next
        admission waits for them."""
        async with self.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO agentstack_rate_limits AS r (key_id, kind, tat)
VALUES (%(key)s, %(kind)s, clock_timestamp() + make_interval(secs => %(step)s))
ON CONFLICT (key_id, kind) DO UPDATE
SET tat = greatest(r.tat, clock_timestamp()) + make_interval(secs => %(step)s)""",
                {"key": key_id, "kind": kind, "step": units * _WINDOW_S / per_minute},
            )

    async def settle(self, key_id: str, per_minute: int, *, kind: str, units: int) -> None:
        """Count `units` more (or fewer, refunded) than were admitted: a reply's real tokens against the
        estimate its request was admitted with."""
        if units == 0:
            return
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE agentstack_rate_limits SET tat = tat + make_interval(secs => %s) "
                "WHERE key_id = %s AND kind = %s",
                (units * _WINDOW_S / per_minute, key_id, kind),
            )


def cost_usd(
    prices: Mapping[str, Mapping[str, float]], model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    """What a reply cost by the price table (`AGENTSTACK_PRICES`, by model); None when the model has no price.

    A price is USD per 1,000 input and output tokens, or, for a model on the team's own GPUs, the GPU-hour's
    price and the throughput measured on it (generated tokens a second over all the replica's requests, and
    prompt tokens a second, which default to the same): a reply costs the GPU time its tokens took at that
    throughput. `agentstack_backend_generated_tokens_total` and `..._prompt_tokens_total` rates in the fleet's
    metrics, or a `guidellm` run, give the throughput."""
    price = prices.get(model)
    if price is None:
        return None
    if "gpu_hour" in price:
        generated = price.get("tokens_per_s") or 0.0
        prompted = price.get("prompt_tokens_per_s") or generated
        if generated <= 0:
            return None
        return price["gpu_hour"] / 3600 * (prompt_tokens / prompted + completion_tokens / generated)
    return (prompt_tokens * price.get("input", 0.0) + completion_tokens * price.get("output", 0.0)) / 1000


class Spend:
    """What keys spent per period of their budget (US dollars from a per-model price table), in Postgres."""

    def __init__(self, pool: Any, prices: Mapping[str, Mapping[str, float]]) -> None:
        self.pool = pool
        self.prices = prices  # model -> {"input": USD per 1,000 tokens, "output": ...}

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What a reply cost; None when the model has no price."""
        return cost_usd(self.prices, model, prompt_tokens, completion_tokens)

    async def spent(self, key_id: str, period: str) -> float:
        """What the key spent in the current `period` (hour, day, week, month)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT usd FROM agentstack_spend WHERE key_id = %s AND period_start = date_trunc(%s, now())",
                    (key_id, period),
                )
            ).fetchone()
        return float(row["usd"]) if row is not None else 0.0

    async def add(self, key_id: str, period: str, usd: float) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO agentstack_spend AS s (key_id, period_start, usd) VALUES (%s, date_trunc(%s, now()), %s) "
                "ON CONFLICT (key_id, period_start) DO UPDATE SET usd = s.usd + excluded.usd",
                (key_id, period, usd),
            )


class RequestRefused(Exception):
    """A request over one of the `RequestLimits`: its message names the limit, `code` says which."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask, whoever asks (safe defaults; `Settings` sets them): how much text it holds, how
    many tokens it lets the model write (one that does not say gets the ceiling, so no request is unbounded), how
    long a streamed reply may run."""

    max_input_chars: int = 400_000
    max_tokens_ceiling: int = 8192
    max_stream_s: float = 900.0

    def check_input(self, texts: list[str], *, what: str) -> None:
        chars = sum(len(t) for t in texts)
        if chars > self.max_input_chars:
            raise RequestRefused(
                f"{what} holds {chars} characters; this server takes at most {self.max_input_chars} "
                "(AGENTSTACK_MAX_INPUT_CHARS)",
                "input_too_long",
            )

    def bounded(self, request: dict[str, Any], texts: list[str]) -> bool:
        """Check a model request against the limits, giving it the ceiling when it sets no `max_tokens`; whether
        the request was changed."""
        self.check_input(texts, what="the request")
        asked = [request[k] for k in ("max_tokens", "max_completion_tokens") if isinstance(request.get(k), int)]
        if any(n > self.max_tokens_ceiling for n in asked):
            raise RequestRefused(
                f"max_tokens {max(asked)} is above this gateway's ceiling of {self.max_tokens_ceiling} "
                "(AGENTSTACK_MAX_TOKENS_CEILING)",
                "max_tokens_too_large",
            )
        if not asked:
            request["max_tokens"] = self.max_tokens_ceiling
            return True
        return False


def request_limits(settings: Settings) -> RequestLimits:
    return RequestLimits(settings.max_input_chars, settings.max_tokens_ceiling, settings.max_stream_s)
