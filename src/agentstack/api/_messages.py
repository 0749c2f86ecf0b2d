"""The LangGraph API's `messages` stream mode: each model message whole so far, not its chunks.

`messages-tuple` sends LangGraph's chunks as they come (`[chunk, metadata]`); `messages`, the older mode that
LangGraph's JS client and UIs read, sends a message's metadata once (`messages/metadata`, `{id: {"metadata":
...}}`), then the message accumulated so far after each chunk (`messages/partial`, a one-message list), or the
message whole when it came whole (`messages/complete`: a tool's result, a reply that was not streamed), as the
LangGraph API's `stream.py` writes them.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message

from agentstack.api._wire import wire

__all__ = ["MessageEvents"]


class MessageEvents:
    """One run's messages, accumulated by id."""

    def __init__(self) -> None:
        self._so_far: dict[str | None, BaseMessage] = {}

    def events(self, chunk: tuple[BaseMessage, dict[str, Any]]) -> list[tuple[str, Any]]:
        """The events one `(message, metadata)` chunk of LangGraph's messages mode becomes."""
        message, metadata = chunk
        events: list[tuple[str, Any]] = []
        before = self._so_far.get(message.id)
        if before is None:
            events.append(("messages/metadata", {message.id: {"metadata": wire(metadata)}}))
            so_far = message
        elif isinstance(before, BaseMessageChunk) and isinstance(message, BaseMessageChunk):
            so_far = before + message
        else:
            so_far = message
        self._so_far[message.id] = so_far
        kind = "messages/partial" if isinstance(message, BaseMessageChunk) else "messages/complete"
        events.append((kind, [wire(message_chunk_to_message(so_far))]))  # type: ignore[arg-type]
        return events
