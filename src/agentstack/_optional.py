"""Optional dependencies, imported where they are used, failing with the exact install command.

The CLI, `doctor` and the cheap parts of the library must work without the `local` extra (Milvus Lite,
llama-index, sentence-transformers, PyStemmer...); what needs one of those imports it on first use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from agentstack.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """`import module`, or a `MissingDependencyError` saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or ""
        if missing and not (module == missing or module.startswith(f"{missing}.") or missing.startswith(f"{module}.")):
            raise  # installed, but one of its own imports failed: that error is the one to read
        raise MissingDependencyError(
            f"{feature} needs the Python package that provides {module!r}, which is not installed",
            fix=f"pip install 'agentstack[{extra}]'",
        ) from exc
