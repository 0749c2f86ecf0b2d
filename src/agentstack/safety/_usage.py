"""What a run's model calls used, and charging it to the key that asked for the run (the agent server).

The worker runs every graph with a `RunUsage` callback: each chat model call's reported usage
(`usage_metadata`), by model. When the run ends (however it ends: tokens spent on a failed run were spent), its
tokens are charged to the key's tokens a minute and their cost, by the price table, to the key's budget: the
next run of a key that went over waits (429) or is refused (402) when it is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from agentstack.safety._limits import Limiter, Spend

__all__ = ["RunUsage", "charge_run", "usage_by_model"]


def usage_by_model(response: LLMResult) -> dict[str, tuple[int, int]]:
    """Tokens in and out a model reply reported, by the model that answered: its messages' `usage_metadata`, or,
    for a reply that tells it only there, the `token_usage` of its `llm_output`. Read here for every observer
    (the usage that is charged, the metrics, the traces), so they count alike."""
    output = response.llm_output or {}
    named = output.get("model_name")
    found: dict[str, tuple[int, int]] = {}
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None) or {}
            if not usage:
                continue
            model = str((getattr(message, "response_metadata", None) or {}).get("model_name") or named or "unknown")
            tokens_in, tokens_out = found.get(model, (0, 0))
            found[model] = (
                tokens_in + int(usage.get("input_tokens", 0)),
                tokens_out + int(usage.get("output_tokens", 0)),
            )
    token_usage = output.get("token_usage") or {}
    if not found and token_usage:
        found[str(named or "unknown")] = (
            int(token_usage.get("prompt_tokens", 0)), int(token_usage.get("completion_tokens", 0))
        )  # fmt: skip
    return found


class RunUsage(BaseCallbackHandler):
    """Tokens in and out, by model, of every chat model call made under it."""

    run_inline = True  # a few additions: not worth a thread hop per model call

    def __init__(self) -> None:
        self.by_model: dict[str, list[int]] = {}

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.add(usage_by_model(response))

    def add(self, used: Mapping[str, tuple[int, int]]) -> None:
        """One model call's `usage_by_model` (an observer that read it already hands it over)."""
        for model, (tokens_in, tokens_out) in used.items():
            counts = self.by_model.setdefault(model, [0, 0])
            counts[0] += tokens_in
            counts[1] += tokens_out

    @property
    def total(self) -> int:
        return sum(i + o for i, o in self.by_model.values())


async def charge_run(charge: Mapping[str, Any], usage: RunUsage, limiter: Limiter, spend: Spend) -> None:
    """Charge a run's usage to its key: `charge` is what the run was created with (key id, tokens a minute,
    budget)."""
    key_id = str(charge["key_id"])
    if charge.get("tpm") and usage.total:
        await limiter.charge(key_id, int(charge["tpm"]), kind="tpm", units=usage.total)
    if charge.get("budget"):
        _usd, period = charge["budget"]
        cost = sum(spend.cost(model, i, o) or 0.0 for model, (i, o) in usage.by_model.items())
        if cost:
            await spend.add(key_id, str(period), cost)
