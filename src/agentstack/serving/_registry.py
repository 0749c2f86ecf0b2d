"""`BackendRegistry`: backend classes by name, from the `agentstack.backends` entry-point group.

A package adds a backend by declaring it, as agentstack declares its own in pyproject.toml:

    [project.entry-points."agentstack.backends"]
    mybackend = "mypackage.backend:MyBackend"      # a subclass of agentstack.serving.Backend

Names are read from the installed packages' metadata; a class is imported only when a spec names
it, so a broken third-party backend cannot break specs that do not use it. A spec's `backend` is
checked against a registry (`FleetSpec.from_yaml(path, backends=...)`; by default the installed
one, read once per process by `default_registry()`).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping

from agentstack.errors import ConfigError
from agentstack.serving._backends._base import Backend

__all__ = ["BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "BackendRegistry", "default_registry"]

ENTRY_POINT_GROUP = "agentstack.backends"

# agentstack's own, exactly as pyproject.toml declares them (a test holds the two equal). Listed here too so that
# a source checkout whose installed metadata predates the group (an older editable install) still has them.
BUILTIN_BACKENDS: Mapping[str, str] = {
    "vllm": "agentstack.serving._backends._vllm:VllmBackend",
    "sglang": "agentstack.serving._backends._sglang:SglangBackend",
    "llamacpp": "agentstack.serving._backends._llamacpp:LlamaCppBackend",
    "external": "agentstack.serving._backends._external:ExternalBackend",
}


class BackendRegistry:
    """Names to backend classes; `get` imports a class the first time it is asked for."""

    def __init__(self, entries: Mapping[str, str | type[Backend]]) -> None:
        """`entries`: name -> `module:Class` (an entry point's value) or the class itself."""
        self._entries = dict(entries)
        self._classes: dict[str, type[Backend]] = {}

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> BackendRegistry:
        """agentstack's backends and those of every installed package's `group` entry points."""
        entries: dict[str, str | type[Backend]] = dict(BUILTIN_BACKENDS)
        declared_by = dict.fromkeys(BUILTIN_BACKENDS, "agentstack")
        for entry in importlib.metadata.entry_points(group=group):
            owner = entry.dist.name if entry.dist is not None else "an unnamed package"
            if entry.name in entries and entries[entry.name] != entry.value:
                raise ConfigError(
                    f"two packages declare the model backend {entry.name!r}: {declared_by[entry.name]} "
                    f"({entries[entry.name]}) and {owner} ({entry.value})",
                    fix=f"uninstall one of them; backend names in the {group!r} entry points must be unique",
                )
            entries[entry.name] = entry.value
            declared_by[entry.name] = owner
        return cls(entries)

    @property
    def names(self) -> tuple[str, ...]:
        """Every known name, agentstack's first (in their documented order), then the others sorted."""
        builtin = [name for name in BUILTIN_BACKENDS if name in self._entries]
        return (*builtin, *sorted(name for name in self._entries if name not in BUILTIN_BACKENDS))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> type[Backend]:
        """The class registered as `name`; a `ConfigError` lists the known names when there is none."""
        found = self._classes.get(name)
        if found is not None:
            return found
        if name not in self._entries:
            raise ConfigError(
                f"no model backend is named {name!r}; known: {', '.join(self.names)}",
                fix=f"use one of those, or install the package that declares {name!r} "
                f"in the {ENTRY_POINT_GROUP!r} entry points",
            )
        found = _load(name, self._entries[name])
        self._classes[name] = found
        return found


def _load(name: str, target: str | type[Backend]) -> type[Backend]:
    if isinstance(target, str):
        try:
            target = importlib.metadata.EntryPoint(name, target, ENTRY_POINT_GROUP).load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"the model backend {name!r} ({target}) cannot be loaded: {exc}",
                fix="reinstall the package that declares it, or uninstall it",
            ) from exc
    if not (isinstance(target, type) and issubclass(target, Backend)):
        raise ConfigError(
            f"the model backend {name!r} is {target!r}, not a subclass of agentstack.serving.Backend",
            fix="point its entry point at a Backend subclass",
        )
    if getattr(target, "name", None) != name:
        raise ConfigError(
            f"the model backend registered as {name!r} calls itself {getattr(target, 'name', None)!r}",
            fix="make the entry point's name and the class's `name` the same",
        )
    return target


@functools.cache
def default_registry() -> BackendRegistry:
    """The installed backends, read once per process (what the entry points name does not change while we run)."""
    return BackendRegistry.from_entry_points()
