"""The guard against real model calls in tests (the ini option `agentstack_block_model_requests`).

A test suite that drives graphs with scripted models should never reach a real model by accident: a
forgotten `model=` sends the run to the fleet (minutes on a CPU) or to a paid API. With the option on,
a chat model that is not a test double raises `ModelRequestBlockedError` the moment a call starts,
unless the test is marked `@pytest.mark.allow_model_requests`.

Why a LangChain callback, registered as a configure hook: every call of a LangChain chat model (invoke,
ainvoke, stream, batch, structured output, a graph's node, a tool) configures a callback manager and
reports `on_chat_model_start` before any request leaves, so the hook sees them all. Its context variable
has the guard as its default, so the hook holds in threads that did not copy the test's context. Blocking
sockets or httpx instead would also block the real Postgres, Milvus and HTTP servers the tests use on
purpose. What the guard does not see: HTTP a test sends itself (a raw httpx request, an embeddings or
rerank client), and other processes (a CLI run in a subprocess has its own settings). The fleet's canary
asks through `ChatOpenAI`, so a test that starts a fleet is marked `allow_model_requests`.

Code under test catches ordinary errors on purpose (a research search turns a failing searcher into a
recorded failure, a tool's error becomes a message for the agent), which would hide the guard's. So its
error is a `BaseException`, like `KeyboardInterrupt`: a control-flow signal to the test, which no
`except Exception` swallows; `pytest.raises(ModelRequestBlockedError)` still catches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook

__all__ = ["DOUBLES", "ModelRequestBlockedError", "ModelRequestGuard", "install_guard"]

# `_llm_type` of the models that answer without a request: ours and LangChain's fakes.
DOUBLES = frozenset(
    {
        "agentstack-scripted",
        "fake-list",
        "fake-chat-model",
        "fake-list-chat-model",
        "fake-messages-list-chat-model",
        "generic-fake-chat-model",
        "parrot-fake-chat-model",
    }
)


class ModelRequestBlockedError(BaseException):
    """A test called a real chat model while the suite blocks model requests (a BaseException: see above)."""

    def __init__(self, problem: str, *, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}\n  fix: {fix}")


class ModelRequestGuard(BaseCallbackHandler):
    """Raises on the start of a real chat model's call while `blocking` (set per test by the plugin)."""

    raise_error = True  # LangChain re-raises instead of logging a handler's error
    run_inline = True  # in the caller's task, before the request

    def __init__(self) -> None:
        self.blocking = False
        self.test = ""

    def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, **kwargs: Any) -> None:
        kind = (kwargs.get("invocation_params") or {}).get("_type", "")
        if self.blocking and kind not in DOUBLES:
            name = (serialized or {}).get("name") or ".".join((serialized or {}).get("id") or []) or kind
            raise ModelRequestBlockedError(
                f"{self.test or 'this test'} called a real chat model ({name}) while the suite blocks model "
                "requests (agentstack_block_model_requests)",
                fix="script it (scripted_model, schema_model), or mark the test @pytest.mark.allow_model_requests",
            )

    def on_llm_start(self, serialized: dict[str, Any], prompts: Any, **kwargs: Any) -> None:
        # Completion models (langchain's BaseLLM) report this instead.
        self.on_chat_model_start(serialized, prompts, **kwargs)

    @contextmanager
    def around(self, test: str, *, allowed: bool) -> Iterator[None]:
        """Block for the duration of one test unless it is `allowed`."""
        self.blocking, self.test = not allowed, test
        try:
            yield
        finally:
            self.blocking, self.test = False, ""


_GUARD = ModelRequestGuard()
_installed = False


def install_guard() -> ModelRequestGuard:
    """The guard, added to every LangChain callback manager (in every thread), not yet blocking.

    One per process, registered once: LangChain's configure hooks are global and cannot be removed, so a
    pytest session run inside another (pytester) shares it rather than stacking a second.
    """
    global _installed
    if not _installed:
        register_configure_hook(ContextVar("agentstack_model_request_guard", default=_GUARD), inheritable=True)
        _installed = True
    return _GUARD
