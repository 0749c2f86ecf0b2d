"""The approval policy: which tool calls wait for a human (`tools/policy.yaml`).

    require_approval:      # tool names or glob patterns
      - write_file
      - run_python
    allow:                 # optional exceptions to the patterns above
      - read_*

Kept as a file next to the tool packs so the people who decide what an agent may do unattended can
change it without touching code.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from agentstack._bundled import bundled
from agentstack.errors import ConfigError

__all__ = ["ApprovalPolicy", "default_policy_path"]


def default_policy_path() -> Path:
    """`tools/policy.yaml`: packaged as `agentstack/graphs/toolpacks`, or read from a source checkout."""
    return bundled("graphs/toolpacks", "tools") / "policy.yaml"


@dataclass(frozen=True)
class ApprovalPolicy:
    require_approval: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()

    @classmethod
    def of(cls, require_approval: Sequence[str], allow: Sequence[str] = ()) -> ApprovalPolicy:
        return cls(tuple(require_approval), tuple(allow))

    @classmethod
    def from_yaml(cls, path: Path) -> ApprovalPolicy:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"approval policy {path} does not exist", fix="pass an existing policy.yaml") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"approval policy {path} is not valid YAML: {exc}", fix="fix its syntax") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"approval policy {path} is not a mapping", fix="write `require_approval: [names]`")
        unknown = set(data) - {"require_approval", "allow"}
        if unknown:
            raise ConfigError(
                f"approval policy {path} has unknown keys: {', '.join(sorted(unknown))}",
                fix="use require_approval and allow",
            )
        lists = {}
        for key in ("require_approval", "allow"):
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{path}: `{key}` must be a list of tool names or patterns", fix=f"{key}: [name]")
            lists[key] = tuple(value)
        return cls(lists["require_approval"], lists["allow"])

    @classmethod
    def default(cls) -> ApprovalPolicy:
        return cls.from_yaml(default_policy_path())

    def needs_approval(self, tool: str) -> bool:
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.allow):
            return False
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.require_approval)
