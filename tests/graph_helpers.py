"""Scripts for the graph tests: a scripted model that answers by the structured-output schema asked for.

Stateless by design (each reply depends only on what the model is sent), so the resume checker can
re-run a graph any number of times and get the same replies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from langchain_core.messages import BaseMessage

from agentstack.testing import ScriptedChatModel

Reply = Any
ByPrompt = Callable[[str], Reply]


def schema_model(**replies: Reply | ByPrompt) -> ScriptedChatModel:
    """`schema_model(Plan={...}, Analysis=lambda prompt: {...})`: a reply per schema name, maybe per prompt."""

    def respond(messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Reply:
        if len(tools) != 1:
            raise AssertionError(f"expected one structured-output schema, got {[t['function']['name'] for t in tools]}")
        name = tools[0]["function"]["name"]
        if name not in replies:
            raise AssertionError(f"the script has no reply for {name}")
        reply = replies[name]
        prompt = "\n".join(str(m.content) for m in messages)
        return reply(prompt) if callable(reply) else reply

    return ScriptedChatModel.from_script(respond)


DOCS = {
    "resume.md": "# Resuming\n\nA thread resumes from its last Postgres checkpoint after a crash; "
    "finished steps do not run again.",
    "fleet.md": "# Fleet\n\nThe fleet restarts a crashed llama.cpp replica with exponential backoff.",
    "rag.md": "# Retrieval\n\nHybrid retrieval fuses dense vectors and BM25 with reciprocal rank fusion.",
}


class LengthFinishReasonError(Exception):
    """Named like openai's, which a reply cut at max_tokens raises; it carries the cut completion's usage."""

    def __init__(self, total_tokens: int = 0) -> None:
        super().__init__("length")
        self.completion = SimpleNamespace(usage=SimpleNamespace(total_tokens=total_tokens))


def thread() -> dict[str, Any]:
    """A run config on a new thread."""
    return {"configurable": {"thread_id": uuid.uuid4().hex}}
