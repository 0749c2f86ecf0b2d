"""GPU inventory and telemetry through NVML (nvidia-ml-py), the same source nvidia-smi reads.

NVML reports memory that other processes hold, which `torch.cuda` cannot see without
creating a context on every device; placement needs exactly that figure.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pynvml
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["GpuCollector", "GpuInfo", "gpu_inventory"]

_log = logging.getLogger(__name__)


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


class GpuCollector(Collector):
    """GPU telemetry from NVML at each scrape: utilisation, memory used and total, temperature and power per GPU,
    and the memory each replica's server holds on each. NVML is opened at the first scrape and kept open until
    `close` (opening it costs more than a scrape's reads); without a driver or a GPU it exports nothing, says so
    once in the log, and is not tried again (a CPU fleet is not an error, and a driver does not appear later)."""

    def __init__(self, replica_pids: Callable[[], Mapping[int, tuple[str, str]]] = dict) -> None:
        """`replica_pids`: pid -> (model, replica index) of the fleet's server processes, read at each scrape.
        Each was started in a session of its own, so a process of its (vLLM's engine core, SGLang's schedulers,
        which hold the GPU memory, not the server's first process) is found by its session id."""
        self._replica_pids = replica_pids
        self._state: str = "closed"  # closed, open, absent

    def describe(self) -> Iterable[Metric]:
        """The families it exports (no samples): what dashboards may name, GPU or not."""
        return self._families()

    def close(self) -> None:
        if self._state == "open":
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
            self._state = "closed"

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        gpu = ["gpu", "name"]
        return (
            GaugeMetricFamily("agentstack_gpu_utilization_ratio", "Share of time the GPU was busy.", labels=gpu),
            GaugeMetricFamily("agentstack_gpu_memory_used_bytes", "GPU memory in use.", labels=gpu),
            GaugeMetricFamily("agentstack_gpu_memory_total_bytes", "GPU memory in all.", labels=gpu),
            GaugeMetricFamily("agentstack_gpu_temperature_celsius", "GPU temperature.", labels=gpu),
            GaugeMetricFamily("agentstack_gpu_power_watts", "GPU power draw.", labels=gpu),
            GaugeMetricFamily(
                "agentstack_replica_gpu_memory_bytes",
                "GPU memory a replica's server processes hold, per GPU.",
                labels=["model", "replica", "gpu"],
            ),
        )

    def _opened(self) -> bool:
        if self._state == "closed":
            try:
                pynvml.nvmlInit()
                self._state = "open"
            except pynvml.NVMLError as exc:
                _log.info("no GPU telemetry: NVML is not available here (%s)", exc)
                self._state = "absent"
        return self._state == "open"

    def collect(self) -> Iterable[Metric]:
        if not self._opened():
            return
        util, used, total, temperature, power, held = self._families()
        replicas = self._replica_pids()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            labels = [str(index), _text(pynvml.nvmlDeviceGetName(handle))]
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            used.add_metric(labels, float(memory.used))
            total.add_metric(labels, float(memory.total))
            for family, read in (
                (util, lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100),
                (temperature, lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                (power, lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000),
            ):
                with contextlib.suppress(pynvml.NVMLError):  # not every GPU reports every figure
                    family.add_metric(labels, float(read(handle)))
            held_by: dict[tuple[str, str], float] = {}
            with contextlib.suppress(pynvml.NVMLError):
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    owner = replicas.get(_session(int(process.pid)))
                    if owner is not None and process.usedGpuMemory is not None:
                        held_by[owner] = held_by.get(owner, 0.0) + float(process.usedGpuMemory)
            for owner, held_bytes in held_by.items():
                held.add_metric([*owner, str(index)], held_bytes)
        yield from (util, used, total, temperature, power, held)


def _session(pid: int) -> int:
    """The id of `pid`'s session (its first process's pid): the same for a replica's server and every process it
    started."""
    try:
        return os.getsid(pid)
    except OSError:  # gone, or in another PID namespace (a container's pid NVML sees from the host)
        return pid
