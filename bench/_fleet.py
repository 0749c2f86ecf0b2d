"""Shared by the fleet benchmarks: the CPU fleet with overrides, a direct client, percentiles."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from agentstack.serving import Fleet, FleetSpec, default_fleet_spec

MODEL = "gemma-270m"


def cpu_fleet(*, home: Path | None = None, **model: Any) -> Fleet:
    """serving/cpu-tiny.yaml with overrides, in a throwaway home unless one is given."""
    path = default_fleet_spec()
    data = yaml.safe_load(path.read_text())
    data["models"][0]["chat_template"] = str(path.parent / data["models"][0]["chat_template"])
    data["models"][0].update(model)
    home = home or Path(tempfile.mkdtemp(prefix="agentstack-bench-"))
    return Fleet(FleetSpec.from_data(data), home=home)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
