"""A run's events as its observer (`RunObserver`: metrics and spans) reads them, one way for both: which chain
is a graph node, which model a call asks, which error is a wait for a human, not a failure. And what a node
reports beyond LangChain's own events: a retrieval, with its legs' times (`agentstack.retrieval`), a custom
event that reaches the run's callbacks from inside a node without the node knowing who observes.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["RETRIEVAL_EVENT", "is_interrupt", "is_node", "requested_model", "report_retrieval"]

RETRIEVAL_EVENT = "agentstack.retrieval"
_HIDDEN = "langsmith:hidden"  # LangGraph's tag on its internal runnables


def is_node(name: str, metadata: Mapping[str, Any], tags: Sequence[str] | None) -> bool:
    """Whether a chain that starts is a graph node (not a channel write, nor a sequence inside a node)."""
    return metadata.get("langgraph_node") == name and _HIDDEN not in (tags or [])


def requested_model(metadata: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The model a model call asks for ("unknown" when neither LangChain nor the call's parameters say)."""
    return str(metadata.get("ls_model_name") or params.get("model") or params.get("model_name") or "unknown")


def is_interrupt(error: BaseException) -> bool:
    """A chain that ends so because the run waits for a human (`interrupt()`), which is not a failure."""
    from langgraph.errors import GraphBubbleUp

    return isinstance(error, GraphBubbleUp)


async def report_retrieval(result: Any, *, k: int, retriever: str = "hybrid") -> None:
    """Tell the run's observers about a `RetrievalResult` (its `timings_ms`: embed, each leg, fetch, rerank,
    total). Outside a run (no callbacks to tell) it does nothing."""
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.runnables.config import var_child_runnable_config

    # Told directly, not through `adispatch_custom_event`, which configures a callback manager each time
    # (~50 us, a tenth of a scripted research run's observed cost): the node's run and the handlers that listen.
    config = var_child_runnable_config.get() or {}
    manager = config.get("callbacks")
    run_id = getattr(manager, "parent_run_id", None)
    listening = [
        h for h in getattr(manager, "handlers", None) or []
        if type(h).on_custom_event is not BaseCallbackHandler.on_custom_event
    ]  # fmt: skip
    if run_id is None or not listening:
        return
    data = {
        "retriever": retriever,
        "k": k,
        "found": len(result),
        "reranked": bool(getattr(result, "reranked", False)),
        "timings_ms": dict(getattr(result, "timings_ms", {}) or {}),
    }
    for handler in listening:
        try:
            told = handler.on_custom_event(RETRIEVAL_EVENT, data, run_id=run_id)
            if inspect.isawaitable(told):
                await told
        except Exception:  # an observer's fault is never the run's
            if getattr(handler, "raise_error", False):
                raise
