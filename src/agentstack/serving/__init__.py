"""The models layer: GPU inventory now; specs, backends, placement and the fleet build on it."""

from agentstack.serving._nvml import GpuInfo, gpu_inventory

__all__ = ["GpuInfo", "gpu_inventory"]
