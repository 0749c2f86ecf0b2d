"""`Settings`: the one place agentstack reads the environment.

Everything else receives its configuration as arguments, so a test or an application can
build any part with explicit values and never be surprised by a stray variable. Sources,
highest priority first: constructor arguments, `AGENTSTACK_*` environment variables, then
`agentstack.toml` in the working directory. (No `.env` file: a project's `.env` holds other
tools' variables too, and strict settings would refuse them.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agentstack.errors import ConfigError

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Runtime configuration with a working local default for every field."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTSTACK_",
        extra="forbid",
        toml_file="agentstack.toml",
        validate_default=True,
    )

    home: Path = Field(
        default=Path("~/.agentstack"),
        description="Where agentstack keeps its local state (the embedded Postgres cluster, logs).",
    )
    postgres_url: str | None = Field(
        default=None,
        description="Postgres to store checkpoints in; unset starts a private server under <home>/pg.",
    )
    postgres_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="TCP port of the embedded Postgres on 127.0.0.1; 0 picks a free one.",
    )
    postgres_bin_dir: Path | None = Field(
        default=None,
        description="Directory holding initdb/pg_ctl/postgres; unset searches PATH and /usr/lib/postgresql.",
    )
    api_lease_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long an agent server worker's claim on a run lasts unrenewed (renewed every third of "
        "it): the longest a run of a worker that died waits before another worker continues it.",
    )
    otlp_endpoint: str = Field(
        default="",
        description="Export traces by OTLP/HTTP to this collector (its base URL, or the full /v1/traces URL); "
        "empty: no OTLP export.",
    )
    otlp_headers: dict[str, str] = Field(
        default_factory=dict, description='Headers for the OTLP exporter (JSON, e.g. {"x-honeycomb-team": "..."}).'
    )
    langfuse_host: str = Field(
        default="", description="Export traces to this Langfuse (its OpenTelemetry endpoint); empty: not to Langfuse."
    )
    langfuse_public_key: str = Field(default="", description="The Langfuse project's public key (pk-lf-...).")
    langfuse_secret_key: SecretStr = Field(
        default=SecretStr(""), description="The Langfuse project's secret key (sk-lf-...)."
    )
    trace_sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="The share of runs traced (a run continuing a caller's trace follows it)."
    )
    trace_url: str = Field(
        default="",
        description="Where a trace is seen, with {trace_id} in it (e.g. https://langfuse.example/project/P/traces/"
        "{trace_id}): printed after a traced run and by threads show; empty: the trace id alone.",
    )
    trace_content: bool = Field(
        default=False,
        description="Put prompts and completions on the model spans (PII-masked by the pii detectors); off: only "
        "models, tokens and timings.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="Verify callers' HS256 JWTs with this secret (their `sub` becomes the caller)."
    )
    jwt_jwks_file: Path | None = Field(
        default=None, description="Verify callers' RS256/ES256 JWTs with the keys of this JWKS file (by `kid`)."
    )
    jwt_audience: str | None = Field(default=None, description="The `aud` a caller's JWT must carry.")
    jwt_issuer: str | None = Field(default=None, description="The `iss` a caller's JWT must carry.")
    prices: dict[str, dict[Literal["input", "output", "gpu_hour", "tokens_per_s", "prompt_tokens_per_s"], float]] = (
        Field(
            default_factory=dict,
            description='What models cost: USD per 1,000 tokens, JSON such as {"llama-8b": {"input": 0.05, '
            '"output": 0.1}}; or, for a model on your own GPUs, its GPU-hour price and measured throughput, '
            '{"llama-8b": {"gpu_hour": 2.5, "tokens_per_s": 1800, "prompt_tokens_per_s": 20000}}. The audit '
            "and the usage rows record each reply's cost; a key with a budget can use only priced models.",
        )
    )
    max_input_chars: int = Field(
        default=400_000,
        ge=100,
        description="The most text a run's input (agent server) or a request's messages (gateway) may hold.",
    )
    max_tokens_ceiling: int = Field(
        default=8192,
        ge=1,
        description="The most tokens a gateway request may ask the model to write (max_tokens); one that asks "
        "for more is refused, one that does not say gets this.",
    )
    max_stream_s: float = Field(
        default=900,
        gt=0,
        description="How long the gateway relays one streamed reply before it ends it (a runaway generation).",
    )
    max_body_bytes: int = Field(
        default=10_000_000,
        ge=1_000,
        description="The largest request body the agent server and the gateway take (a larger one is a 413).",
    )
    audit_retention_days: float = Field(
        default=90,
        gt=0,
        description="How long the audit log keeps what the agent server and the gateway were asked.",
    )
    pii: Literal["off", "mask", "block"] = Field(
        default="off",
        description="Personal data and secrets in what the gateway sends to the models and in a run's input at the "
        "agent server: off, mask (placeholders such as <EMAIL_1> before the model and in what is stored; the "
        "gateway puts the values back in the reply) or block (a 400 naming the kinds).",
    )
    injection: Literal["off", "flag", "block"] = Field(
        default="flag",
        description="Prompt injection in a run's input (agent server) or in the user and tool messages the gateway "
        "passes on: off, flag (marked in the run's metadata and the audit) or block (a 400 naming the reasons).",
    )
    pii_models: dict[str, Literal["off", "mask", "block"]] = Field(
        default_factory=dict,
        description='The pii policy for some models, by name (JSON, e.g. {"gpt-4o": "block"}); the others follow pii.',
    )
    pii_assistants: dict[str, Literal["off", "mask", "block"]] = Field(
        default_factory=dict,
        description="The pii policy for some assistants at the agent server, by assistant id or graph id (JSON, "
        'e.g. {"research": "mask"}); the others follow pii.',
    )
    injection_assistants: dict[str, Literal["off", "flag", "block"]] = Field(
        default_factory=dict,
        description="The injection policy for some assistants at the agent server, by assistant id or graph id "
        '(JSON, e.g. {"approval": "block"}); the others follow injection.',
    )
    pii_presidio_model: str = Field(
        default="",
        description="A spaCy model (an installed package such as en_core_web_lg, or a directory) for Presidio to "
        "find names, places and nationalities as personal data too (the pii extra); empty: the built-in kinds only.",
    )
    pii_presidio_entities: list[str] = Field(
        default_factory=lambda: ["PERSON", "LOCATION", "NRP"],
        description="The Presidio entities found when pii_presidio_model is set (JSON list).",
    )
    pii_redact_output: bool = Field(
        default=False,
        description="Scan what the models write too: personal data in a reply that the caller did not send "
        "(it came from a document, a tool, the model's memory) becomes [EMAIL], [PHONE]... (gateway).",
    )
    pii_restore: bool = Field(
        default=True, description="With pii=mask, put the values back in the reply (false: the caller sees masks)."
    )
    pii_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="More kinds of personal data, by name: regexes (JSON in AGENTSTACK_PII_PATTERNS, e.g. "
        '{"order": "ORD-\\d{6}"}).',
    )
    checkpoint_pool_size: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Connections in the checkpoint saver's pool: how many threads save at once.",
    )

    fleet: Path | None = Field(
        default=None,
        description="Fleet spec (YAML) that `Fleet.from_settings` serves; unset: serving/cpu-tiny.yaml.",
    )
    llm_base_url: str | None = Field(
        default=None,
        description="Any OpenAI-compatible /v1 URL to run the graphs' models on instead of starting the fleet.",
    )
    llm_model: str | None = Field(
        default=None,
        description="Chat model for the graphs: a model of the fleet, or the name served at llm_base_url; "
        "unset: the fleet's first chat model (required with llm_base_url).",
    )
    llm_api_key: SecretStr | None = Field(default=None, description="API key for llm_base_url.")
    judge_base_url: str | None = Field(
        default=None,
        description="Any OpenAI-compatible /v1 URL whose model judges `agentstack eval --judge model`; unset: "
        "judge_model of the fleet, else the graphs' own model.",
    )
    judge_model: str | None = Field(
        default=None,
        description="The judge's chat model: the name served at judge_base_url (required with it), or a model "
        "of the fleet; unset: the graphs' own model.",
    )
    judge_api_key: SecretStr | None = Field(default=None, description="API key for judge_base_url.")
    answer_style: Literal["written", "extractive"] | None = Field(
        default=None,
        description="How the graphs answer: written by the model, or extractive (evidence sentences it picks); "
        "unset: the fleet model's `answer_style` (extractive for the CPU default); with llm_base_url, that of "
        "the fleet spec's model named llm_model, else written.",
    )
    llama_server: Path | None = Field(
        default=None,
        description="llama.cpp's llama-server binary; unset: next to Python, then PATH, then <home>/bin.",
    )

    milvus_uri: str | None = Field(
        default=None,
        description="Milvus to index into: a server URL (http://host:19530), a .db path (Milvus Lite), or the "
        "unix:<socket> address of a Milvus Lite server another process shares; unset: <home>/milvus.db.",
    )
    milvus_token: SecretStr | None = Field(default=None, description="Token for a Milvus server (user:password).")
    collection: str = Field(
        default="agentstack",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
        description="Milvus collection of the hybrid index.",
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="Embedding model: the bundled default, a sentence-transformers name or path, or the model "
        "name served at embedding_base_url.",
    )
    embedding_base_url: str | None = Field(
        default=None, description="An OpenAI-compatible /v1 URL to embed with instead of a local model."
    )
    embedding_api_key: SecretStr | None = Field(default=None, description="API key for embedding_base_url.")
    reranker: Literal["none", "http", "cohere"] | None = Field(
        default=None,
        description="Who reranks retrieved passages: none (the fused order), http (rerank_url, self-hosted) or "
        "cohere (Cohere's API: passages leave this machine). Unset: http when rerank_url is set, else none; "
        "Cohere is never chosen by itself, whatever keys the environment holds.",
    )
    rerank_url: str | None = Field(
        default=None, description="A self-hosted rerank endpoint (/v1/rerank: vLLM, llama.cpp, TEI)."
    )
    rerank_model: str = Field(default="rerank-v3.5", description="Model name sent to the reranker.")
    cohere_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("cohere_api_key", "AGENTSTACK_COHERE_API_KEY", "COHERE_API_KEY"),
        description="Cohere's API key (COHERE_API_KEY works too); used only with reranker=cohere.",
    )

    workspace: Path | None = Field(
        default=None,
        description="The directory the approval agent's file tools read and write (the same for `Stack` and "
        "the deployable graphs); unset: <home>/workspace. `agentstack run` works in the current directory "
        "unless this is set.",
    )

    graph_url: str | None = Field(
        default=None,
        description="Graph store for graph RAG: neo4j://user:pw@host:7687 or redis://:pw@host:port (FalkorDB); "
        "unset: a local FalkorDB under <home>/falkordb.",
    )

    @field_validator("home", "postgres_bin_dir", "fleet", "llama_server", "workspace", "jwt_jwks_file", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("milvus_uri", mode="after")
    @classmethod
    def _expand_milvus_path(cls, value: str | None) -> str | None:
        # a Milvus Lite file: ~ means home, as in the other path settings (not an address: a URL, a unix: socket)
        if value and "://" not in value and not value.startswith("unix:"):
            return str(Path(value).expanduser())
        return value or None

    @field_validator("prices", mode="after")
    @classmethod
    def _check_prices(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for model, price in value.items():
            if "gpu_hour" in price and not price.get("tokens_per_s", 0) > 0:
                raise ValueError(
                    f"the price of {model!r} is a GPU-hour's: it needs the tokens_per_s measured on that GPU "
                    '(e.g. {"gpu_hour": 2.5, "tokens_per_s": 1800})'
                )
            if any(amount < 0 for amount in price.values()):
                raise ValueError(f"the price of {model!r} has a negative figure")
        return value

    @field_validator("pii_patterns", mode="after")
    @classmethod
    def _check_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for name, regex in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"pattern name {name!r} must be lowercase letters, digits and _ (it names a mask)")
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a regex: {exc}") from None
        return value

    @field_validator("llm_base_url", "judge_base_url", mode="after")
    @classmethod
    def _check_llm_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
        return value or None

    @field_validator("postgres_url", mode="after")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError(
                "must start with postgresql:// (for example postgresql://user:pw@host:5432/db); "
                "unset it to use the embedded server"
            )
        return value or None

    @model_validator(mode="after")
    def _default_workspace(self) -> Self:
        # Not the working directory: a served graph's working directory holds the server's own files. Set
        # without marking the field as given, so `model_fields_set` still says whether the user chose one.
        if self.workspace is None:
            object.__setattr__(self, "workspace", self.home / "workspace")
        return self

    @model_validator(mode="after")
    def _check_reranker(self) -> Self:
        if self.reranker == "cohere" and self.cohere_api_key is None:
            raise ValueError("reranker=cohere needs Cohere's key: set COHERE_API_KEY (or AGENTSTACK_COHERE_API_KEY)")
        if self.reranker == "http" and not self.rerank_url:
            raise ValueError("reranker=http needs AGENTSTACK_RERANK_URL, the /v1/rerank endpoint to use")
        return self

    @model_validator(mode="after")
    def _check_judge(self) -> Self:
        if self.judge_base_url and not self.judge_model:
            raise ValueError(
                "judge_base_url needs judge_model, the name that server serves: set AGENTSTACK_JUDGE_MODEL"
            )
        return self

    @property
    def chosen_reranker(self) -> Literal["none", "http", "cohere"]:
        """The reranker in effect: `reranker` when set, else http when `rerank_url` is set, else none."""
        if self.reranker is not None:
            return self.reranker
        return "http" if self.rerank_url else "none"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Build settings, turning a validation failure into a `ConfigError` that names the field."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "settings"
                lines.append(f"{field}: {err['msg']}")
            raise ConfigError(
                "invalid agentstack settings: " + "; ".join(lines),
                fix="correct the AGENTSTACK_<FIELD> environment variable or agentstack.toml entry named above",
            ) from exc
