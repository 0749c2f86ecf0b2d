"""The models layer: fleet specs, backends, GPU placement, supervised servers, the router and the gateway."""

from agentstack.serving._backends import (
    Backend,
    ExternalBackend,
    LaunchCommand,
    LlamaCppBackend,
    SglangBackend,
    VllmBackend,
    backend_for,
)
from agentstack.serving._fleet import Fleet, default_fleet_spec
from agentstack.serving._gateway import gateway_app, gateway_server
from agentstack.serving._llama_server import build_llama_server, find_llama_server
from agentstack.serving._nvml import GpuInfo, gpu_inventory
from agentstack.serving._placement import Placement, place
from agentstack.serving._replica import Replica, ReplicaState
from agentstack.serving._router import THREAD_HEADER, Router
from agentstack.serving._spec import FleetSpec, LoraAdapter, ModelSpec

__all__ = [
    "THREAD_HEADER",
    "Backend",
    "ExternalBackend",
    "Fleet",
    "FleetSpec",
    "GpuInfo",
    "LaunchCommand",
    "LlamaCppBackend",
    "LoraAdapter",
    "ModelSpec",
    "Placement",
    "Replica",
    "ReplicaState",
    "Router",
    "SglangBackend",
    "VllmBackend",
    "backend_for",
    "build_llama_server",
    "default_fleet_spec",
    "find_llama_server",
    "gateway_app",
    "gateway_server",
    "gpu_inventory",
    "place",
]
