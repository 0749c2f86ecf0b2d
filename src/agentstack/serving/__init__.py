"""The models layer: fleet specs, backends, GPU placement, supervised servers, the router and the gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

# name -> the module that defines it; loaded on first use (see agentstack._lazy)
_EXPORTS: dict[str, str] = {
    "Backend": "agentstack.serving._backends",
    "BackendContext": "agentstack.serving._backends",
    "BackendRegistry": "agentstack.serving._registry",
    "BackendStats": "agentstack.serving._metrics",
    "Fleet": "agentstack.serving._fleet",
    "FleetSpec": "agentstack.serving._spec",
    "GpuInfo": "agentstack.serving._nvml",
    "LaunchCommand": "agentstack.serving._process",
    "LoraAdapter": "agentstack.serving._spec",
    "MetricNames": "agentstack.serving._backends",
    "ModelSpec": "agentstack.serving._spec",
    "Placement": "agentstack.serving._placement",
    "Prepared": "agentstack.serving._backends",
    "Replica": "agentstack.serving._replica",
    "ReplicaState": "agentstack.serving._replica",
    "Router": "agentstack.serving._router",
    "StructuredDialect": "agentstack.serving._backends",
    "THREAD_HEADER": "agentstack.serving._router",
    "default_fleet_spec": "agentstack.serving._fleet",
    "default_registry": "agentstack.serving._registry",
    "gateway_app": "agentstack.serving._gateway",
    "gateway_server": "agentstack.serving._gateway",
    "gpu_inventory": "agentstack.serving._nvml",
}

__all__ = [
    "Backend",
    "BackendContext",
    "BackendRegistry",
    "BackendStats",
    "Fleet",
    "FleetSpec",
    "GpuInfo",
    "LaunchCommand",
    "LoraAdapter",
    "MetricNames",
    "ModelSpec",
    "Placement",
    "Prepared",
    "Replica",
    "ReplicaState",
    "Router",
    "StructuredDialect",
    "THREAD_HEADER",
    "default_fleet_spec",
    "default_registry",
    "gateway_app",
    "gateway_server",
    "gpu_inventory",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.serving._backends import Backend, BackendContext, MetricNames, Prepared, StructuredDialect
    from agentstack.serving._fleet import Fleet, default_fleet_spec
    from agentstack.serving._gateway import gateway_app, gateway_server
    from agentstack.serving._metrics import BackendStats
    from agentstack.serving._nvml import GpuInfo, gpu_inventory
    from agentstack.serving._placement import Placement
    from agentstack.serving._process import LaunchCommand
    from agentstack.serving._registry import BackendRegistry, default_registry
    from agentstack.serving._replica import Replica, ReplicaState
    from agentstack.serving._router import THREAD_HEADER, Router
    from agentstack.serving._spec import FleetSpec, LoraAdapter, ModelSpec
