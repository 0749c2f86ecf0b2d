"""SGLang (`python -m sglang.launch_server`, pinned: SGLang 0.5), the GPU backend with RadixAttention."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from typing import TYPE_CHECKING, ClassVar

from agentstack.errors import MissingDependencyError
from agentstack.serving._backends._base import Backend, MetricNames, Prepared
from agentstack.serving._process import LaunchCommand

if TYPE_CHECKING:
    from agentstack.serving._placement import Placement
    from agentstack.serving._spec import ModelSpec

__all__ = ["SglangBackend"]


class SglangBackend(Backend):
    """`python -m sglang.launch_server` (pinned: SGLang 0.5), run by this Python."""

    name = "sglang"
    gpu_only = True
    default_gpus = 1
    takes = frozenset(
        {
            "replicas",
            "gpus_per_replica",
            "memory_gib",
            "max_context",
            "prefix_caching",
            "lora",
            "max_lora_rank",
            "tool_call_parser",
            "chat_template",
            "extra_args",
            "env",
        }
    )
    metrics = MetricNames(
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        prompt_tokens="sglang:prompt_tokens_total",
        generated_tokens="sglang:generation_tokens_total",
        kv_cache_usage="sglang:token_usage",
        prefix_cache_hit_rate="sglang:cache_hit_rate",
    )
    install_hint = "pip install 'agentstack[sglang]' (SGLang 0.5) on a machine with an NVIDIA GPU"
    batch_slots: ClassVar[int] = 64  # continuous batching, as vLLM

    @classmethod
    def why_not(cls, field: str) -> str:
        if field in ("threads", "parallel"):
            return "only llamacpp takes them; vllm and sglang schedule batches themselves"
        if field == "kv_cache_gib":
            return "only vllm takes an exact KV-cache size; use memory_gib"
        return super().why_not(field)

    @classmethod
    def slots(cls, spec: ModelSpec) -> int:
        return cls.batch_slots

    async def prepare(self, spec: ModelSpec) -> Prepared:
        if await asyncio.to_thread(importlib.util.find_spec, "sglang") is None:
            raise MissingDependencyError("SGLang is not installed in this Python", fix=self.install_hint)
        return Prepared(sys.executable, spec.model)

    def command(
        self, spec: ModelSpec, placement: Placement, prepared: Prepared, *, host: str, port: int
    ) -> LaunchCommand:
        argv = [prepared.program, "-m", "sglang.launch_server", "--model-path", prepared.model, "--host", host]
        argv += ["--port", str(port), "--served-model-name", spec.name, "--tp-size", str(spec.gpus)]
        # SGLang's fraction covers weights and the KV pool, of total memory, like our budget.
        argv += ["--mem-fraction-static", f"{placement.memory_fraction:.3f}", "--enable-metrics"]
        if spec.max_context is not None:
            argv += ["--context-length", str(spec.max_context)]
        if not spec.prefix_caching:
            argv.append("--disable-radix-cache")
        if spec.task == "embed":
            argv.append("--is-embedding")
        elif spec.task == "rerank":
            argv += ["--is-embedding", "--disable-radix-cache"]
        if spec.lora:
            argv += ["--enable-lora", "--max-loras-per-batch", str(len(spec.lora)), "--lora-paths"]
            argv += [f"{a.name}={a.path}" for a in spec.lora]
            if spec.max_lora_rank is not None:
                argv += ["--max-lora-rank", str(spec.max_lora_rank)]
        if spec.tool_call_parser:
            argv += ["--tool-call-parser", spec.tool_call_parser]
        if spec.chat_template:
            argv += ["--chat-template", spec.chat_template]
        traced, tracing_env = self.context.tracing(f"sglang-{spec.name}", "--enable-trace")
        argv += traced
        env = self.env(spec, placement) | tracing_env
        return LaunchCommand(argv + spec.extra_args, env)

    def detect(self) -> str | None:
        return "SGLang (python package)" if importlib.util.find_spec("sglang") else None
