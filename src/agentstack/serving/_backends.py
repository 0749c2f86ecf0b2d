"""Backends: how each model server is launched, probed and spoken to.

A backend is pure knowledge about one server program: the exact command line of the version we
pin, its health endpoint, its Prometheus names and its structured-output dialect. Servers always
run as subprocesses, never imported, so vLLM's and SGLang's dependency trees (each pins its own
torch) stay out of ours.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agentstack.serving._llama_server import find_llama_server
from agentstack.serving._placement import Placement
from agentstack.serving._spec import ModelSpec
from agentstack.serving._weights import resolve_gguf

__all__ = [
    "Backend",
    "ExternalBackend",
    "LaunchCommand",
    "LlamaCppBackend",
    "MetricNames",
    "SglangBackend",
    "VllmBackend",
    "backend_for",
]


@dataclass(frozen=True)
class LaunchCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricNames:
    """The server's own Prometheus series for the figures the fleet reports side by side."""

    running: str
    waiting: str
    prompt_tokens: str
    generated_tokens: str


class Backend:
    """What every backend knows; subclasses fill in the command line."""

    name: ClassVar[str]
    health_path: ClassVar[str] = "/health"
    metrics: ClassVar[MetricNames | None] = None

    def command(self, spec: ModelSpec, placement: Placement, *, host: str, port: int) -> LaunchCommand:
        raise TypeError(f"{self.name} servers are not launched by agentstack")

    def structured_output(self, schema: dict[str, Any], name: str = "reply") -> dict[str, Any]:
        """Request fields that constrain a chat reply to `schema`.

        All our backends take OpenAI's `response_format` json_schema. vLLM >= 0.12 silently
        ignores the old `guided_json` field, so it is never sent.
        """
        return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}}

    def _env(self, spec: ModelSpec, placement: Placement) -> dict[str, str]:
        return {**placement.env, **spec.env}


class VllmBackend(Backend):
    """`vllm serve` (pinned: vLLM 0.33)."""

    name = "vllm"
    metrics = MetricNames(
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        prompt_tokens="vllm:prompt_tokens_total",
        generated_tokens="vllm:generation_tokens_total",
    )

    def command(self, spec: ModelSpec, placement: Placement, *, host: str, port: int) -> LaunchCommand:
        argv = ["vllm", "serve", spec.model, "--host", host, "--port", str(port)]
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
        return LaunchCommand(argv + spec.extra_args, self._env(spec, placement))


class SglangBackend(Backend):
    """`python -m sglang.launch_server` (pinned: SGLang 0.5)."""

    name = "sglang"
    metrics = MetricNames(
        running="sglang:num_running_reqs",
        waiting="sglang:num_queue_reqs",
        prompt_tokens="sglang:prompt_tokens_total",
        generated_tokens="sglang:generation_tokens_total",
    )

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def command(self, spec: ModelSpec, placement: Placement, *, host: str, port: int) -> LaunchCommand:
        argv = [self.python, "-m", "sglang.launch_server", "--model-path", spec.model, "--host", host]
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
        return LaunchCommand(argv + spec.extra_args, self._env(spec, placement))


class LlamaCppBackend(Backend):
    """llama.cpp's `llama-server`: the CPU default, also runs GGUF models on GPUs."""

    name = "llamacpp"
    metrics = MetricNames(
        running="llamacpp:requests_processing",
        waiting="llamacpp:requests_deferred",
        prompt_tokens="llamacpp:prompt_tokens_total",
        generated_tokens="llamacpp:tokens_predicted_total",
    )
    default_parallel: ClassVar[int] = 4
    default_context: ClassVar[int] = 4096

    def __init__(self, *, server: Path | None = None, models_dir: Path, home: Path | None = None) -> None:
        self._server = server
        self._home = home
        self.models_dir = models_dir

    def command(self, spec: ModelSpec, placement: Placement, *, host: str, port: int) -> LaunchCommand:
        server = find_llama_server(self._server, home=self._home)
        model = resolve_gguf(spec.model, self.models_dir)
        parallel = spec.parallel or self.default_parallel
        context = spec.max_context or self.default_context
        argv = [str(server), "--model", str(model), "--host", host, "--port", str(port), "--alias", spec.name]
        # --ctx-size is shared by all slots: give each slot the spec's max context.
        argv += ["--ctx-size", str(context * parallel), "--parallel", str(parallel), "--metrics", "--no-webui"]
        if placement.threads is not None:
            argv += ["--threads", str(placement.threads), "--threads-http", str(max(2, placement.threads))]
        argv += ["--n-gpu-layers", "999" if placement.gpus else "0"]
        if not spec.prefix_caching:
            argv += ["--no-cache-prompt", "--cache-ram", "0"]  # neither slot nor host-RAM prompt cache
        if spec.task == "embed":
            argv += ["--embeddings", "--pooling", "mean"]
        elif spec.task == "rerank":
            argv += ["--reranking"]
        else:
            argv.append("--jinja")  # chat templates with tool calls
            if spec.chat_template:
                argv += ["--chat-template-file", spec.chat_template]
        return LaunchCommand(argv + spec.extra_args, self._env(spec, placement))


class ExternalBackend(Backend):
    """An OpenAI-compatible server someone else runs: routed to and health-checked, never launched."""

    name = "external"
    health_path = "/v1/models"


def backend_for(
    spec: ModelSpec, *, llama_server: Path | None = None, models_dir: Path, home: Path | None = None
) -> Backend:
    """The backend that launches and speaks to `spec`'s server."""
    match spec.backend:
        case "vllm":
            return VllmBackend()
        case "sglang":
            return SglangBackend()
        case "llamacpp":
            return LlamaCppBackend(server=llama_server, models_dir=models_dir, home=home)
        case "external":
            return ExternalBackend()
