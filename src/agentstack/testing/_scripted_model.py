"""`ScriptedChatModel`: a deterministic LangChain chat model for testing graph logic.

A real small model shows that the wiring works; only a scripted one can drive every
branch of a graph (low confidence, a failed tool, a reviewer that rejects twice) on
purpose and on every run. It is a real `BaseChatModel` that takes production's paths:
`with_structured_output(schema)` binds `response_format` json_schema as `ChatOpenAI` does
and parses the reply's JSON *content* (so `StructuredCall` runs exactly as against a
served model), `bind_tools` binds tools and a reply becomes a tool call.

Replies, in order, one per call:
- `str`: an assistant message with that text;
- `AIMessage`: returned as is (e.g. with `tool_calls`, or JSON content and `usage_metadata`);
- `dict` or pydantic model: with a `response_format` bound (structured output), the reply's
  JSON text; with tools bound, a call of the bound tool;
- an exception instance: raised, to script a failing model.
Or a function `(messages, tools) -> reply` that decides from what the model was sent, or
`schema_model(Plan={...}, Analysis=lambda prompt: {...})`: a reply per structured-output schema.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_function, convert_to_openai_tool
from pydantic import BaseModel, Field, PrivateAttr

from agentstack.errors import UserError

__all__ = ["ByPrompt", "Reply", "Responder", "ScriptExhaustedError", "ScriptedChatModel", "schema_model"]

Reply = str | AIMessage | dict[str, Any] | BaseModel | Exception
Responder = Callable[[list[BaseMessage], list[dict[str, Any]]], Reply]
ByPrompt = Callable[[str], Reply]  # the messages' text -> the reply

_GENERIC_CHOICES = {"any", "auto", "required", "none"}


class ScriptExhaustedError(UserError):
    """The graph called the scripted model more often than the script has replies."""


class ScriptedChatModel(BaseChatModel):
    """A chat model that answers from a script (see the module docstring)."""

    replies: list[Any] = Field(default_factory=list)
    responder: Any = None  # Responder | None; pydantic cannot validate a callable's signature
    by_schema: dict[str, Any] | None = None  # schema name -> Reply | ByPrompt (see `schema_model`)

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
        return len(self.replies) - self._cursor if self.responder is None and self.by_schema is None else 0

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
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: str = "json_schema",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """As `ChatOpenAI`: `json_schema` (the default) and `json_mode` bind `response_format` and parse the
        reply's JSON content into `schema`; `function_calling` binds `schema` as a tool and parses the call."""
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)  # type: ignore[arg-type]
        if method not in ("json_schema", "json_mode") or (schema is None and method == "json_schema"):
            raise UserError(
                f"structured output with method={method!r} and schema={schema!r} is not something ChatOpenAI does",
                fix='use method="json_schema" (the default) with a schema, "json_mode" or "function_calling"',
            )
        bind: dict[str, Any] = {"response_format": _response_format(schema, method=method, strict=strict), **kwargs}
        if schema is not None:  # what LangSmith traces record, as ChatOpenAI sends it
            bind["ls_structured_output_format"] = {
                "kwargs": {"method": method, "strict": strict},
                "schema": convert_to_openai_tool(schema),
            }
        model = self.bind(**bind)
        parser = _json_content_parser(schema)
        if not include_raw:
            return model | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=model) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")

    # -- the script ----------------------------------------------------------------------------
    def _next_reply(self, messages: list[BaseMessage], tools: list[dict[str, Any]], response_format: Any) -> Reply:
        with self._lock:
            self._calls.append(list(messages))
            if self.by_schema is not None:
                return _reply_for_schema(self.by_schema, messages, tools, response_format)
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
        response_format = kwargs.get("response_format")
        reply = self._next_reply(messages, tools, response_format)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, AIMessage):
            return reply
        if isinstance(reply, str):
            return AIMessage(content=reply, id=f"scripted-{uuid.uuid4().hex[:12]}")
        if isinstance(reply, (dict, BaseModel)):
            args = reply.model_dump(mode="json") if isinstance(reply, BaseModel) else dict(reply)
            if response_format is not None:  # a server constrained to the schema answers with its JSON text
                return AIMessage(content=json.dumps(args), id=f"scripted-{uuid.uuid4().hex[:12]}")
            name = _tool_name(reply, tools, kwargs.get("tool_choice"))
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


def schema_model(**replies: Reply | ByPrompt) -> ScriptedChatModel:
    """`schema_model(Plan={...}, Analysis=lambda prompt: {...})`: a reply per structured-output schema.

    The schema is the one the call asks for: the `response_format`'s json_schema name (or the one bound tool's).
    A function gets the text of the messages sent and returns the reply, so a test can answer by what the
    prompt shows. Stateless by design: each reply depends only on what the model is sent, so the resume
    checker (`resumable`) can re-run a graph any number of times and get the same replies.
    """
    return ScriptedChatModel(by_schema=dict(replies))


def _reply_for_schema(
    replies: Mapping[str, Any], messages: list[BaseMessage], tools: list[dict[str, Any]], response_format: Any
) -> Reply:
    name = _schema_name(response_format) or (tools[0]["function"]["name"] if len(tools) == 1 else None)
    if name is None:
        raise UserError(
            "a schema_model was called without a structured-output schema (no response_format, "
            f"{len(tools)} tools bound)",
            fix="ask it through with_structured_output(Schema), or script this call with scripted_model([...])",
        )
    if name not in replies:
        raise UserError(f"the script has no reply for {name}", fix=f"add {name}=... to schema_model(...)")
    reply = replies[name]
    if callable(reply):
        return reply("\n".join(str(m.content) for m in messages))
    return reply


def _response_format(schema: dict[str, Any] | type | None, *, method: str, strict: bool | None) -> dict[str, Any]:
    """The request's `response_format`, as ChatOpenAI sends it to an OpenAI-compatible server."""
    if method == "json_mode":
        return {"type": "json_object"}
    if isinstance(schema, dict) and schema.get("type") == "json_schema" and "json_schema" in schema:
        return schema
    if isinstance(schema, dict) and "name" in schema and "schema" in schema:
        return {"type": "json_schema", "json_schema": schema}
    function = convert_to_openai_function(schema, strict=strict)  # type: ignore[arg-type]
    json_schema = {"name": function["name"], "description": function.get("description", "")}
    return {"type": "json_schema", "json_schema": {**json_schema, "schema": function["parameters"], "strict": strict}}


def _schema_name(response_format: Any) -> str | None:
    if isinstance(response_format, dict):
        return response_format.get("json_schema", {}).get("name")
    if isinstance(response_format, type):  # ChatOpenAI binds a pydantic class as is
        return response_format.__name__
    return None


def _json_content_parser(schema: dict[str, Any] | type | None) -> Runnable[BaseMessage, Any]:
    """The reply's JSON text as `schema` (a pydantic model validates it, raising pydantic's `ValidationError`
    like openai's client does), or as a dict for a JSON-schema dict."""
    model = schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None

    def parse(message: BaseMessage) -> Any:
        if model is not None:
            return model.model_validate_json(message.text)
        try:
            return json.loads(message.text)
        except json.JSONDecodeError as exc:
            raise OutputParserException(f"the reply is not JSON: {exc}", llm_output=message.text) from exc

    async def aparse(message: BaseMessage) -> Any:  # no executor hop: parsing is microseconds
        return parse(message)

    return RunnableLambda(parse, afunc=aparse, name="parse_json_content")


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
        f"a dict reply answers a structured-output request (with_structured_output) or calls the one bound tool, "
        f"but this call has no response_format and {len(tools)} tools bound",
        fix="script an AIMessage with tool_calls=[...] naming the tool, or a pydantic model named like the tool",
    )


def _chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
    """Stream text word by word (tokens for the graph's stream), tool calls in one chunk, usage on the last,
    which says it is the last."""
    text = message.content if isinstance(message.content, str) else ""
    words = text.split(" ")
    pieces = [word if i == len(words) - 1 else word + " " for i, word in enumerate(words)]
    chunks = [AIMessageChunk(content=piece, id=message.id) for piece in pieces if piece]
    if message.tool_calls:
        calls = [
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i, "type": "tool_call_chunk"}
            for i, c in enumerate(message.tool_calls)
        ]
        chunks.append(AIMessageChunk(content="", id=message.id, tool_call_chunks=calls))  # type: ignore[arg-type]
    if message.usage_metadata:
        if not chunks:
            chunks.append(AIMessageChunk(content="", id=message.id))
        chunks[-1].usage_metadata = message.usage_metadata
    if chunks:  # as a provider marks its last chunk (else langchain-core adds an empty one under another id)
        chunks[-1].chunk_position = "last"
        chunks[-1].response_metadata = dict(message.response_metadata)  # the model's name, as a provider's has
    for chunk in chunks:
        yield ChatGenerationChunk(message=chunk)
