"""The backends agentstack ships (each declared in pyproject.toml's `agentstack.backends` entry points)."""

from agentstack.serving._backends._base import (
    BACKEND_OPTIONS,
    RESPONSE_FORMAT,
    Backend,
    BackendContext,
    MetricNames,
    Prepared,
    StructuredDialect,
)
from agentstack.serving._backends._external import ExternalBackend
from agentstack.serving._backends._llamacpp import LlamaCppBackend
from agentstack.serving._backends._sglang import SglangBackend
from agentstack.serving._backends._vllm import VllmBackend

__all__ = [
    "BACKEND_OPTIONS",
    "RESPONSE_FORMAT",
    "Backend",
    "BackendContext",
    "ExternalBackend",
    "LlamaCppBackend",
    "MetricNames",
    "Prepared",
    "SglangBackend",
    "StructuredDialect",
    "VllmBackend",
]
