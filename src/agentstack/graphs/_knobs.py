"""Runtime knobs: the one way a graph's nodes, and the CLI, read a run's context.

A run's knobs come through LangGraph's `context=` as a frozen dataclass (`ResearchContext`...). A node asks
`read_knobs(runtime, ResearchContext)`: the run's context when it is one (a subclass counts, so the team's
`TeamContext` reaches its research subgraph), else the defaults, so a graph run without `context=` behaves
as documented. The CLI (and anything else that reads knobs as text) builds the context with
`context_from_knobs`, which names an unknown knob instead of ignoring it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from langgraph.runtime import Runtime
from pydantic import TypeAdapter, ValidationError

from agentstack.errors import GraphInputError

__all__ = ["context_from_knobs", "read_knobs"]

C = TypeVar("C")


def read_knobs(runtime: Runtime[Any] | None, kind: type[C]) -> C:
    """The run's context if it is a `kind`, else `kind()` with every knob at its default."""
    context = getattr(runtime, "context", None)
    return context if isinstance(context, kind) else kind()


def context_from_knobs(kind: type[C], values: Mapping[str, Any], *, graph: str) -> C:
    """`kind(**values)`, refusing a knob `kind` does not have (a typo would otherwise be silently ignored)."""
    known = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise GraphInputError(
            f"the {graph} graph has no knob {', '.join(sorted(unknown))}",
            fix=f"use some of: {', '.join(sorted(known))}",
        )
    try:
        # Checked against the dataclass's field types: `--set k=abc` or `--set filters=x` would otherwise fail
        # deep inside a step, or be passed on silently.
        return TypeAdapter(kind).validate_python(dict(values))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise GraphInputError(
            f"the {graph} graph's knobs do not fit: {problems}",
            fix='give each knob a value of its type, e.g. --set k=8 --set filters=\'{"file_type": "md"}\'',
        ) from exc
