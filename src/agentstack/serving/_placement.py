"""Deterministic placement of replicas on GPUs (and CPU threads) before anything launches.

The packer works on an NVML inventory taken once, so the same spec on the same free memory
always lands the same way, and a spec that cannot fit fails before a single model loads, with
the GPU, its free memory and the need named. Best-fit decreasing: the largest replicas go first,
each onto the GPUs that it leaves with the least spare room, which keeps large holes for later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentstack.errors import ConfigError
from agentstack.serving._nvml import GpuInfo
from agentstack.serving._spec import FleetSpec, ModelSpec

__all__ = ["Placement", "estimate_replica_bytes", "local_weights_bytes", "place"]

GIB = 1024**3
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class Placement:
    """Where one replica runs: its GPUs (NVML indices) and memory budget, or its CPU threads."""

    model: str
    replica: int
    gpus: tuple[int, ...] = ()
    bytes_per_gpu: int = 0
    memory_fraction: float | None = None
    threads: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """Pins the replica to its GPUs; a CPU replica sees none, so a CUDA build cannot grab one."""
        return {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # NVML numbers GPUs by PCI bus; make CUDA agree
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in self.gpus),
        }


def local_weights_bytes(model: str) -> int | None:
    """Size of weights on local disk, or None for a hub id or anything not on disk."""
    path = Path(model).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES) or None
    return None


def estimate_replica_bytes(spec: ModelSpec, weights_bytes: int | None) -> int:
    """Memory one replica needs: the spec's budget, else weights + 25% + 2 GiB for KV cache and activations."""
    if spec.memory_gib is not None:
        return int(spec.memory_gib * GIB)
    if weights_bytes is None:
        raise ConfigError(
            f"model {spec.name!r} ({spec.model}) has no memory budget and its weights are not on local disk to size",
            fix=f"set memory_gib for {spec.name!r}: weights plus KV cache per replica (for example 24 for an 8B model)",
        )
    kv = int(spec.kv_cache_gib * GIB) if spec.kv_cache_gib else 2 * GIB
    return math.ceil(weights_bytes * 1.25) + kv


def place(
    fleet: FleetSpec,
    gpus: Sequence[GpuInfo],
    *,
    cpu_count: int | None = None,
    weights_bytes: Callable[[ModelSpec], int | None] = lambda spec: local_weights_bytes(spec.model),
) -> list[Placement]:
    """Place every launched replica, in spec order; raise `ConfigError` for what cannot fit."""
    launched = [spec for spec in fleet.models if spec.launched]
    cpu_replicas = sum(spec.replicas for spec in launched if spec.gpus == 0)
    cores = cpu_count or os.cpu_count() or 1
    by_replica: dict[tuple[str, int], Placement] = {}

    for spec in launched:
        if spec.gpus == 0:
            threads = spec.threads or max(1, cores // max(cpu_replicas, 1))
            for r in range(spec.replicas):
                by_replica[spec.name, r] = Placement(spec.name, r, threads=threads)

    gpu_specs = [spec for spec in launched if spec.gpus > 0]
    if gpu_specs and not gpus:
        spec = gpu_specs[0]
        raise ConfigError(
            f"model {spec.name!r} ({spec.backend}) needs {spec.gpus} GPU(s) per replica, and NVML found no NVIDIA GPU "
            "on this machine",
            fix="run this spec on a GPU machine, or serve a GGUF model with backend: llamacpp on the CPU "
            "(serving/cpu-tiny.yaml)",
        )
    free = {gpu.index: gpu.free_bytes for gpu in gpus}
    info = {gpu.index: gpu for gpu in gpus}
    demands = []
    for order, spec in enumerate(gpu_specs):
        if spec.gpus > len(gpus):
            raise ConfigError(
                f"model {spec.name!r} needs {spec.gpus} GPUs per replica; this machine has {len(gpus)}",
                fix=f"lower gpus_per_replica for {spec.name!r} to at most {len(gpus)}",
            )
        per_gpu = math.ceil(estimate_replica_bytes(spec, weights_bytes(spec)) / spec.gpus)
        demands += [(per_gpu, order, r, spec) for r in range(spec.replicas)]
    demands.sort(key=lambda d: (-d[0], d[1], d[2]))

    for per_gpu, _, r, spec in demands:
        fitting = sorted((room - per_gpu, index) for index, room in free.items() if room >= per_gpu)
        if len(fitting) < spec.gpus:
            rooms = ", ".join(
                f"GPU {i} ({info[i].name}): {free[i] / GIB:.1f} GiB free of {info[i].free_bytes / GIB:.1f} GiB "
                "free before this fleet"
                for i in sorted(free)
            )
            raise ConfigError(
                f"model {spec.name!r} replica {r} needs {per_gpu / GIB:.1f} GiB on each of {spec.gpus} GPU(s) and "
                f"does not fit: {rooms}",
                fix=f"lower memory_gib or replicas of {spec.name!r}, free GPU memory, or run on more GPUs",
            )
        chosen = tuple(sorted(index for _, index in fitting[: spec.gpus]))
        for index in chosen:
            free[index] -= per_gpu
        fraction = min(per_gpu / info[i].total_bytes for i in chosen)
        by_replica[spec.name, r] = Placement(
            spec.name,
            r,
            gpus=chosen,
            bytes_per_gpu=per_gpu,
            memory_fraction=math.floor(fraction * 1000) / 1000,
            threads=spec.threads,  # llama.cpp on a GPU still uses CPU threads; None elsewhere
        )

    return [by_replica[spec.name, r] for spec in launched for r in range(spec.replicas)]
