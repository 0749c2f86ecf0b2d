"""Shared pieces of the fleet tests: the CPU spec with overrides, and process checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agentstack.serving import FleetSpec, default_fleet_spec

MODEL = "gemma-270m"


def tiny_spec(*, fleet: dict[str, Any] | None = None, **model: Any) -> FleetSpec:
    """serving/cpu-tiny.yaml (Gemma 270M on llama.cpp, two replicas) with overrides."""
    path = default_fleet_spec()
    data = yaml.safe_load(path.read_text())
    data["models"][0]["chat_template"] = str(path.parent / data["models"][0]["chat_template"])
    data["models"][0].update(model)
    data.update(fleet or {})
    return FleetSpec.from_data(data)


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie is dead (it only waits for a parent that may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def tiny_spec_file(path: Path, **model: Any) -> Path:
    """`tiny_spec(**model)` written as a YAML spec file at `path`."""
    path.write_text(yaml.safe_dump(tiny_spec(**model).model_dump(mode="json", exclude_defaults=True)))
    return path
