"""vLLM (`vllm serve`, pinned: vLLM 0.33), the GPU backend for hub models, LoRA adapters and pooling models."""

from __future__ import annotations

import importlib.util
import shutil
from typing import TYPE_CHECKING, ClassVar

from agentstack.serving._backends._base import Backend, MetricNames, Prepared
from agentstack.serving._process import LaunchCommand, find_program

if TYPE_CHECKING:
    from agentstack.serving._placement import Placement
    from agentstack.serving._spec import ModelSpec

__all__ = ["VllmBackend"]


class VllmBackend(Backend):
    """`vllm serve` (pinned: vLLM 0.33)."""

    name = "vllm"
    gpu_only = True
    default_gpus = 1
    takes = frozenset(
        {
            "replicas",
            "gpus_per_replica",
            "memory_gib",
            "kv_cache_gib",
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
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        prompt_tokens="vllm:prompt_tokens_total",
        generated_tokens="vllm:generation_tokens_total",
        kv_cache_usage="vllm:kv_cache_usage_perc",
        prefix_cache_hits="vllm:prefix_cache_hits_total",
        prefix_cache_queries="vllm:prefix_cache_queries_total",
    )
    install_hint = "pip install 'agentstack[gpu]' (vLLM 0.33) on a machine with an NVIDIA GPU"
    # Continuous batching: a replica takes far more requests at once than llama.cpp's fixed slots.
    batch_slots: ClassVar[int] = 64

    @classmethod
    def why_not(cls, field: str) -> str:
        if field in ("threads", "parallel"):
            return "only llamacpp takes them; vllm and sglang schedule batches themselves"
        return super().why_not(field)

    @classmethod
    def slots(cls, spec: ModelSpec) -> int:
        return cls.batch_slots

    async def prepare(self, spec: ModelSpec) -> Prepared:
        return Prepared(find_program("vllm", install_hint=self.install_hint), spec.model)  # vLLM fetches hub ids

    def command(
        self, spec: ModelSpec, placement: Placement, prepared: Prepared, *, host: str, port: int
    ) -> LaunchCommand:
        argv = [prepared.program, "serve", prepared.model, "--host", host, "--port", str(port)]
        argv += ["--served-model-name", spec.name, "--tensor-parallel-size", str(spec.gpus)]
        # vLLM's flag is a fraction of each GPU's *total* memory that this instance may take.
        argv += ["--gpu-memory-utilization", f"{placement.memory_fraction:.3f}"]
        if spec.kv_cache_gib is not None:  # vLLM's figure is per GPU; ours is per replica
            argv += ["--kv-cache-memory-bytes", str(int(spec.kv_cache_gib * 1024**3 / spec.gpus))]
        if spec.max_context is not None:
            argv += ["--max-model-len", str(spec.max_context)]
        argv.append("--enable-prefix-caching" if spec.prefix_caching else "--no-enable-prefix-caching")
        if spec.task == "embed":
            argv += ["--runner", "pooling", "--convert", "embed"]
        elif spec.task == "rerank":
            argv += ["--runner", "pooling", "--convert", "classify"]
        if spec.lora:
            argv += ["--enable-lora", "--max-loras", str(len(spec.lora)), "--lora-modules"]
            argv += [f"{a.name}={a.path}" for a in spec.lora]
            if spec.max_lora_rank is not None:
                argv += ["--max-lora-rank", str(spec.max_lora_rank)]
        if spec.tool_call_parser:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", spec.tool_call_parser]
        if spec.chat_template:
            argv += ["--chat-template", spec.chat_template]
        traced, tracing_env = self.context.tracing(f"vllm-{spec.name}")
        argv += traced
        env = self.env(spec, placement) | tracing_env
        return LaunchCommand(argv + spec.extra_args, env)

    def detect(self) -> str | None:
        program = shutil.which("vllm")
        if program is None and importlib.util.find_spec("vllm") is None:
            return None
        return f"vLLM ({program or 'python package'})"
