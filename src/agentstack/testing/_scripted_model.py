"""`ScriptedChatModel`: a deterministic LangChain chat model for testing graph logic.

A real small model shows that the wiring works; only a scripted one can drive every
branch of a graph (low confidence, a failed tool, a reviewer that rejects twice) on
purpose and on every run. It is a real `BaseChatModel`: `bind_tools` and
`with_structured_output` go through LangChain's own code paths, so a graph cannot tell it
from a provider's model.

Replies, in order, one per call:
- `str`: an assistant message with that text;
- `AIMessage`: returned as is (e.g. with `tool_calls`);
- `dict` or pydantic model: a call of the bound tool, which is what structured output asks
  for, so `model.with_structured_output(Plan)` parses it into a `Plan`;
- an exception instance: raised, to script a failing model.
Or a function `(messages, tools) -> reply` that decides from what the model was sent.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field, PrivateAttr

from agentstack.errors import UserError

__all__ = ["Reply", "Responder", "ScriptedChatModel", "ScriptExhaustedError"]

Reply = str | AIMessage | dict[str, Any] | BaseModel | Exception
Responder = Callable[[list[BaseMessage], list[dict[str, Any]]], Reply]

_GENERIC_CHOICES = {"any", "auto", "required", "none"}


class ScriptExhaustedError(UserError):
    """The graph called the scripted model more often than the script has replies."""


class ScriptedChatModel(BaseChatModel):
    """A chat model that answers from a script (see the module docstring)."""

    replies: list[Any] = Field(default_factory=list)
    responder: Any = None  # Responder | None; pydantic cannot validate a callable's signature

    _cursor: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)

    @classmethod
    def from_script(cls, script: Sequence[Reply] | Responder) -> ScriptedChatModel:
        if callable(script):
            return cls(responder=script)
        return cls(replies=list(script))

    @property
    def _llm_type(self) -> str:
        return "agentstack-scripted"

    @property
    def calls(self) -> list[list[BaseMessage]]:
        """The messages of every call so far, for assertions on what the graph sent."""
        return list(self._calls)

    @property
    def remaining(self) -> int:
        return len(self.replies) - self._cursor if self.responder is None else 0

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: str | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Accepts ChatOpenAI's `method`/`strict` so graph code is the same for both; replies are tool calls."""
        return super().with_structured_output(schema, include_raw=include_raw, **kwargs)

    # -- the script ----------------------------------------------------------------------------
    def _next_reply(self, messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Reply:
        with self._lock:
            self._calls.append(list(messages))
            if self.responder is not None:
                return self.responder(list(messages), tools)
            if self._cursor >= len(self.replies):
                raise ScriptExhaustedError(
                    f"the scripted model was called {len(self._calls)} times but its script has "
                    f"{len(self.replies)} replies; last input: {messages[-1].content!r:.200}",
                    fix="add replies to the script, or check why the graph called the model again",
                )
            reply = self.replies[self._cursor]
            self._cursor += 1
            return reply

    def _message(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        tools: list[dict[str, Any]] = kwargs.get("tools") or []
        reply = self._next_reply(messages, tools)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, AIMessage):
            return reply
        if isinstance(reply, str):
            return AIMessage(content=reply, id=f"scripted-{uuid.uuid4().hex[:12]}")
        if isinstance(reply, (dict, BaseModel)):
            name = _tool_name(reply, tools, kwargs.get("tool_choice"))
            args = reply.model_dump(mode="json") if isinstance(reply, BaseModel) else dict(reply)
            call = {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}
            return AIMessage(content="", tool_calls=[call], id=f"scripted-{uuid.uuid4().hex[:12]}")
        raise UserError(
            f"a scripted reply must be a str, AIMessage, dict, pydantic model or exception, got {type(reply).__name__}",
            fix="change that entry of the script",
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(messages, **kwargs))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in _chunks(self._message(messages, **kwargs)):
            if run_manager and isinstance(chunk.message.content, str):
                run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in _chunks(self._message(messages, **kwargs)):
            if run_manager and isinstance(chunk.message.content, str):
                await run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)
            yield chunk


def _tool_name(reply: dict[str, Any] | BaseModel, tools: list[dict[str, Any]], choice: Any) -> str:
    if isinstance(choice, str) and choice not in _GENERIC_CHOICES:
        return choice
    if isinstance(choice, dict):
        return str(choice.get("function", {}).get("name") or choice.get("name"))
    if len(tools) == 1:
        return str(tools[0]["function"]["name"])
    if isinstance(reply, BaseModel):
        return type(reply).__name__
    raise UserError(
        f"a dict reply needs exactly one bound tool to call, but {len(tools)} are bound",
        fix="script an AIMessage with tool_calls=[...] naming the tool, or a pydantic model named like the tool",
    )


def _chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
    """Stream text word by word (tokens for the graph's stream), tool calls in one chunk."""
    text = message.content if isinstance(message.content, str) else ""
    words = text.split(" ")
    for i, word in enumerate(words):
        piece = word if i == len(words) - 1 else word + " "
        if piece:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message.id))
    if message.tool_calls:
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                id=message.id,
                tool_call_chunks=[
                    {
                        "name": c["name"],
                        "args": json.dumps(c["args"]),
                        "id": c["id"],
                        "index": i,
                        "type": "tool_call_chunk",
                    }
                    for i, c in enumerate(message.tool_calls)
                ],
            )
        )
