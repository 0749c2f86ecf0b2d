"""Package exports that load on first use (PEP 562), written once for every package of the library.

Importing any module of a package runs the package's `__init__` first. With eager re-exports, a light
module (the CLI's, the pytest plugin's, an error class) would pay for LangGraph, psycopg, httpx and the
fleet every time. Each package instead maps its public names to the modules defining them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], public: Sequence[str], *, listed: bool = True
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, whose `exports` map each public name to its module.

    `listed=False` keeps the names out of `dir()`: pytest registers a plugin by reading every name `dir()`
    shows, which would import them all.
    """
    if set(exports) != set(public):
        raise AssertionError(f"{package}: __all__ and the exports map name different things")
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *public}) if listed else sorted(namespace)

    return __getattr__, __dir__
