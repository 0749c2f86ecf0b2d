"""GPU inventory through NVML (nvidia-ml-py), the same source nvidia-smi reads.

NVML reports memory that other processes hold, which `torch.cuda` cannot see without
creating a context on every device; placement needs exactly that figure.
"""

from __future__ import annotations

from dataclasses import dataclass

import pynvml

__all__ = ["GpuInfo", "gpu_inventory"]


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int]
    driver: str


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def gpu_inventory() -> list[GpuInfo]:
    """Every NVIDIA GPU on the machine (NVML ignores CUDA_VISIBLE_DEVICES); empty without a driver or GPU."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    total_bytes=int(memory.total),
                    free_bytes=int(memory.free),
                    compute_capability=(int(major), int(minor)),
                    driver=driver,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()
