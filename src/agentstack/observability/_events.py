"""What a graph node reports to the run's observers beyond LangChain's own events: a retrieval, with its legs'
times (`agentstack.retrieval`), so a trace shows it as a span and the metrics count each leg.

A LangChain custom event: it reaches the run's callbacks (the tracing and metrics callbacks handle it, others
ignore it) from inside a node, without the node knowing who observes.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["RETRIEVAL_EVENT", "report_retrieval"]

RETRIEVAL_EVENT = "agentstack.retrieval"


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
