"""What every built-in graph records in its checkpoints' metadata."""

from __future__ import annotations

from collections.abc import Sequence

from agentstack.prompts import Prompt

__all__ = ["run_metadata"]


def run_metadata(graph: str, prompts: Sequence[Prompt]) -> dict[str, str]:
    """The graph's name and prompt versions, as flat strings: LangGraph copies only scalar config metadata
    into each checkpoint's metadata."""
    return {"agentstack_graph": graph, "agentstack_prompts": " ".join(sorted(p.ref for p in prompts))}
