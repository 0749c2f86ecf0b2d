"""What a graph node reports to the run's observers beyond LangChain's own events: a retrieval, with its legs'
times (`agentstack.retrieval`), so a trace shows it as a span and the metrics count each leg.

A LangChain custom event: it reaches the run's callbacks (the tracing and metrics callbacks handle it, others
ignore it) from inside a node, without the node knowing who observes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RETRIEVAL_EVENT", "report_retrieval"]

RETRIEVAL_EVENT = "agentstack.retrieval"


async def report_retrieval(result: Any, *, k: int, retriever: str = "hybrid") -> None:
    """Tell the run's observers about a `RetrievalResult` (its `timings_ms`: embed, each leg, fetch, rerank,
    total). Outside a run (no callbacks to tell) it does nothing."""
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.callbacks.manager import adispatch_custom_event
    from langchain_core.runnables.config import var_child_runnable_config

    # dispatching configures a callback manager (~50 us): only when a handler of the run would hear it
    config = var_child_runnable_config.get() or {}
    manager = config.get("callbacks")
    handlers = getattr(manager, "handlers", None) or (manager if isinstance(manager, list) else [])
    if not any(type(h).on_custom_event is not BaseCallbackHandler.on_custom_event for h in handlers):
        return
    data = {
        "retriever": retriever,
        "k": k,
        "found": len(result),
        "reranked": bool(getattr(result, "reranked", False)),
        "timings_ms": dict(getattr(result, "timings_ms", {}) or {}),
    }
    try:
        await adispatch_custom_event(RETRIEVAL_EVENT, data)
    except RuntimeError:  # not inside a runnable: nobody to tell
        return
