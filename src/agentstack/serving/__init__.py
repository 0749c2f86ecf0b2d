"""The models layer: fleet specs, backends, GPU placement, supervised servers, the router and the gateway."""

from agentstack.serving._backends import (
    Backend,
    BackendContext,
    ExternalBackend,
    LlamaCppBackend,
    MetricNames,
    Prepared,
    SglangBackend,
    StructuredDialect,
    VllmBackend,
)
from agentstack.serving._fleet import Fleet, default_fleet_spec
from agentstack.serving._gateway import gateway_app, gateway_server
from agentstack.serving._llama_server import build_llama_server, find_llama_server
from agentstack.serving._metrics import BackendStats
from agentstack.serving._nvml import GpuInfo, gpu_inventory
from agentstack.serving._placement import Placement, place
from agentstack.serving._process import LaunchCommand
from agentstack.serving._registry import BackendRegistry, default_registry
from agentstack.serving._replica import Replica, ReplicaState
from agentstack.serving._router import THREAD_HEADER, Router
from agentstack.serving._spec import FleetSpec, LoraAdapter, ModelSpec

__all__ = [
    "THREAD_HEADER",
    "Backend",
    "BackendContext",
    "BackendRegistry",
    "BackendStats",
    "ExternalBackend",
    "Fleet",
    "FleetSpec",
    "GpuInfo",
    "LaunchCommand",
    "LlamaCppBackend",
    "LoraAdapter",
    "MetricNames",
    "ModelSpec",
    "Placement",
    "Prepared",
    "Replica",
    "ReplicaState",
    "Router",
    "SglangBackend",
    "StructuredDialect",
    "VllmBackend",
    "build_llama_server",
    "default_fleet_spec",
    "default_registry",
    "find_llama_server",
    "gateway_app",
    "gateway_server",
    "gpu_inventory",
    "place",
]
