"""Shared by the fleet benchmarks: the CPU fleet with overrides, a direct client, percentiles."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from agentstack.serving import Fleet, FleetSpec, default_fleet_spec

MODEL = "gemma-270m"


@asynccontextmanager
async def cpu_fleet(**model: Any) -> AsyncIterator[Fleet]:
    """serving/cpu-tiny.yaml with overrides, started in a throwaway home that goes with it.

    The home holds a 240 MB copy of the weights: left behind, every smoke run of the suite cost that much /tmp.
    """
    path = default_fleet_spec()
    data = yaml.safe_load(path.read_text())
    data["models"][0]["chat_template"] = str(path.parent / data["models"][0]["chat_template"])
    data["models"][0].update(model)
    with tempfile.TemporaryDirectory(prefix="agentstack-bench-") as home:
        async with Fleet(FleetSpec.from_data(data), home=Path(home)) as fleet:
            yield fleet


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
