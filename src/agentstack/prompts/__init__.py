"""Versioned prompt templates: `prompts/<graph>/<name>.v<N>.yaml` (Jinja2), shipped inside the wheel.

A prompt is data, not code: changing one is a new file with the next version number, so a run's
metadata can say exactly which wording produced it, and an old version stays loadable to reproduce
an old run. Each file has a `system` and/or a `user` template (and an optional `description`).

    library = PromptLibrary()                       # the packaged prompts (or a source checkout's)
    plan = library.get("research", "plan")         # the newest version; pin with version=1
    messages = plan.messages(question="...")       # [SystemMessage, HumanMessage]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agentstack._bundled import bundled
from agentstack.errors import ConfigError, UserError

__all__ = ["Prompt", "PromptLibrary", "default_prompts_dir"]

_FILE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>[0-9]+)\.ya?ml$")
_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def default_prompts_dir() -> Path:
    """`prompts/`: packaged in the wheel as `agentstack/prompts/templates`, or read from a source checkout."""
    return bundled("prompts/templates", "prompts")


@dataclass(frozen=True)
class Prompt:
    """One version of one template; `ref` ("research/plan@v2") is what run metadata records."""

    graph: str
    name: str
    version: int
    system: str
    user: str
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.graph}/{self.name}"

    @property
    def ref(self) -> str:
        return f"{self.key}@v{self.version}"

    @cached_property
    def _templates(self) -> tuple[jinja2.Template, jinja2.Template]:
        """Compiled once per prompt: compiling costs far more than rendering, and a graph renders per step."""
        try:
            return _ENV.from_string(self.system), _ENV.from_string(self.user)
        except jinja2.TemplateError as exc:
            raise ConfigError(
                f"prompt {self.ref} is not a valid Jinja2 template: {exc}", fix=f"fix {self.path}"
            ) from exc

    def render(self, **variables: Any) -> tuple[str, str]:
        """(system, user) text; a variable the template uses but the caller did not pass is an error."""
        system, user = self._templates
        try:
            return system.render(**variables), user.render(**variables)
        except jinja2.UndefinedError as exc:
            raise UserError(
                f"prompt {self.ref} needs a variable that was not given: {exc.message}",
                fix=f"pass it when rendering {self.ref}, or edit {self.path or 'the template'}",
            ) from exc
        except jinja2.TemplateError as exc:
            raise ConfigError(
                f"prompt {self.ref} is not a valid Jinja2 template: {exc}", fix=f"fix {self.path}"
            ) from exc

    def messages(self, **variables: Any) -> list[Any]:
        from langchain_core.messages import HumanMessage, SystemMessage

        system, user = self.render(**variables)
        return [m for m in (SystemMessage(content=system), HumanMessage(content=user)) if m.content]


class PromptLibrary:
    """The templates under one directory, newest version by default; `pins` fixes versions by key."""

    def __init__(self, root: Path | None = None, *, pins: Mapping[str, int] | None = None) -> None:
        self.root = (root or default_prompts_dir()).resolve()
        if not self.root.is_dir():
            raise ConfigError(f"the prompts directory {self.root} does not exist", fix="pass an existing directory")
        self.pins = dict(pins or {})

    @cached_property
    def _files(self) -> dict[str, dict[int, Path]]:
        found: dict[str, dict[int, Path]] = {}
        for path in sorted(self.root.glob("*/*.y*ml")):
            match = _FILE.match(path.name)
            if match is None:
                raise ConfigError(
                    f"prompt file {path} is not named <name>.v<N>.yaml",
                    fix="rename it, e.g. plan.v1.yaml (lowercase name, integer version)",
                )
            found.setdefault(f"{path.parent.name}/{match['name']}", {})[int(match["version"])] = path
        return found

    def versions(self, graph: str, name: str) -> list[int]:
        return sorted(self._files.get(f"{graph}/{name}", {}))

    def get(self, graph: str, name: str, version: int | None = None) -> Prompt:
        key = f"{graph}/{name}"
        available = self._files.get(key)
        if not available:
            raise ConfigError(f"no prompt {key} under {self.root}", fix=f"add {self.root / graph / name}.v1.yaml")
        wanted = version if version is not None else self.pins.get(key, max(available))
        if wanted not in available:
            raise ConfigError(
                f"prompt {key} has no version {wanted} (has {', '.join(f'v{v}' for v in sorted(available))})",
                fix="pin one of the versions that exist",
            )
        return _load(graph, name, wanted, available[wanted])


def _load(graph: str, name: str, version: int, path: Path) -> Prompt:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"prompt file {path} is not valid YAML: {exc}", fix="fix its syntax") from exc
    if not isinstance(data, dict) or not any(isinstance(data.get(k), str) for k in ("system", "user")):
        raise ConfigError(f"prompt file {path} has no template", fix="add `system: |` and/or `user: |` with the text")
    unknown = set(data) - {"system", "user", "description"}
    if unknown:
        raise ConfigError(
            f"prompt file {path} has unknown keys: {', '.join(sorted(unknown))}",
            fix="keep only system, user and description",
        )
    return Prompt(
        graph=graph,
        name=name,
        version=version,
        system=str(data.get("system") or ""),
        user=str(data.get("user") or ""),
        description=str(data.get("description") or ""),
        path=path,
    )
