"""`StructuredCall`: the one way agentstack asks a chat model for a pydantic reply.

The graphs' steps, the knowledge-graph extractor and the fleet's startup canary all ask through it, so
they share one behaviour: `response_format` json_schema (grammar-constrained on llama.cpp, vLLM and
SGLang, so even a 270M model returns valid shapes), one more attempt with other sampling when a reply
does not parse or runs into the token limit, every attempt's tokens counted, and `ModelOutputError`
naming the schema when both fail. It lives below every layer (it needs only a LangChain chat model),
so the models, data and orchestration layers can all use it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.runnables import RunnableBinding, RunnableSequence
from pydantic import BaseModel, ValidationError

from agentstack._upstream_noise import PARSED_SNAPSHOT_WARNING
from agentstack.errors import BackendError, ModelOutputError

if TYPE_CHECKING:
    from agentstack.prompts import Prompt

__all__ = ["StructuredCall", "chat_model_name"]

T = TypeVar("T", bound=BaseModel)

_PARSE_ATTEMPTS = 2
# A greedy (temperature 0) model asked again answers the same thing again; the second attempt samples instead.
_RETRY_TEMPERATURE = 0.7
# Seeds of sampled attempts: `resample * _SEEDS + attempt`, distinct for every attempt of every resample.
_SEEDS = 8
# A reply whose last 200 characters are one pattern of up to 40 repeated (5 times or more) has fallen into a loop
# a tiny model does not leave: "0000...", "\\n\\n...", one line of code over and over, or the same line with
# another number each time (a second look reads every run of digits as one symbol). So has one whose last 100
# characters are all digits: sampling penalties (DRY) turn a loop on one digit into random digits (Gemma 270M
# wrote 2,000 of them as a team's result). No useful field looks like either, and the grammar (a maxLength of
# thousands) would let them run for minutes.
_REPEAT_WINDOW = 200
_REPEAT_MAX_PERIOD = 40
_DIGIT_RUN = 100
_DIGITS = re.compile(r"\d+")
_log = logging.getLogger(__name__)

# langchain-openai's spurious serializer warning on every streamed structured call (see `_upstream_noise`), and
# only it, is silenced: a process-wide filter, added once.
warnings.filterwarnings(
    "ignore",
    message=PARSED_SNAPSHOT_WARNING,
    category=UserWarning,
    module="pydantic.main",
)


class StructuredCall(Generic[T]):
    """`await call(prompt, **variables)` -> (parsed reply, tokens used) for one output schema."""

    def __init__(self, model: BaseChatModel, schema: type[T]) -> None:
        self.schema = schema
        max_tokens = getattr(model, "max_tokens", None)
        self._max_tokens = max_tokens if isinstance(max_tokens, int) else None
        self.model_name = chat_model_name(model)
        structured = model.with_structured_output(schema, method="json_schema")
        # Chat models build structured output as `bound model | parser...` (ChatOpenAI's parser is two steps: a
        # refusal check, then the parse). Calling the model and the parser ourselves keeps the raw reply (its
        # token usage) at a third of the cost of `include_raw=True`, whose map, assign and fallback runnables
        # took 1.7 ms a call (bench/graph_overhead.py); other shapes take that path.
        steps = structured.steps if isinstance(structured, RunnableSequence) else []
        if steps and _is_chat_model(steps[0]):
            self._model = steps[0]
            self._parser = steps[1] if len(steps) == 2 else RunnableSequence(*steps[1:])
            self._sampling = _retry_sampling(model)
            self._seeded = "seed" in type(model).model_fields
            self._with_raw = None
        else:
            self._with_raw = model.with_structured_output(schema, method="json_schema", include_raw=True)

    async def __call__(self, prompt: Prompt, *, resample: int = 0, **variables: Any) -> tuple[T, int]:
        messages = prompt.messages(**variables)
        return await self.ask(messages, ref=prompt.ref, resample=resample)

    async def ask(self, messages: Sequence[BaseMessage], *, ref: str, resample: int = 0) -> tuple[T, int]:
        """One reply parsed as the schema, and the tokens spent on it (every attempt's).

        A reply that does not parse, or that the token limit cut short, is asked for once more: a schema can say
        more than a server's grammar enforces (llama.cpp ignores `exclusiveMinimum`), and the second attempt
        samples (a greedy model is asked at a higher temperature, on the `model | parser` path every chat model
        we know builds), so a small model that rambled into the limit once rarely does it twice. On that path
        every attempt but the last is streamed and watched: one that falls into a loop is stopped there (closing
        the stream frees the server's slot), seconds in rather than thousands of tokens later, and being that
        cheap it earns one extra attempt. The last runs to its end: a model that loops every time still gets the
        reply its schema's bounds allow (nonsense, but a finished run), not an error. `resample` n > 0: every
        attempt samples (the n-th reply of a judge asked again, for the spread of its verdicts).

        Sampled attempts are seeded (from `resample` and the attempt) where the model takes a seed: a rerun
        samples the same replies, so an experiment, a rubric's spread or a retried graph step repeats, while the
        n-th and the m-th replies still differ.
        """
        error: Exception | None = None
        spent = 0
        attempts = _PARSE_ATTEMPTS
        attempt = 0
        while attempt < attempts:
            try:
                sampled = resample > 0 or attempt > 0
                raw, parsed, error = await self._reply(
                    messages, seed=resample * _SEEDS + attempt if sampled else None, watch=attempt + 1 < attempts
                )
            except (OutputParserException, ValueError, RepeatingReply) as exc:
                # ValueError: pydantic's ValidationError (some clients parse inside the call), or openai's stream,
                # which parses the growing JSON as it comes and fails on prose from a server that ignored the schema
                raw, parsed, error = None, None, exc
            except Exception as exc:
                if not _cut_at_token_limit(exc):
                    mapped = _unreachable_model(exc, ref, self.model_name)
                    if mapped is exc:
                        raise
                    raise mapped from exc
                raw, parsed, error = None, None, exc
            spent += _tokens(messages, raw, error, self._max_tokens)
            if isinstance(parsed, self.schema):
                return parsed, spent
            if isinstance(error, RepeatingReply) and attempts == _PARSE_ATTEMPTS:
                attempts += 1  # stopped a few hundred characters in: one more watched try before the last
            attempt += 1
            if attempt < attempts:
                _log.warning(
                    "the reply to %s did not parse as %s, asking again: %s (it ended %r)",
                    ref,
                    self.schema.__name__,
                    error,
                    _reply_text(raw, error)[-120:],
                )
        if error is not None and _cut_at_token_limit(error):
            raise ModelOutputError(
                f"the model's reply to {ref} hit its token limit before the {self.schema.__name__} was complete "
                f"({attempts} attempts)",
                fix="raise the model's max_tokens, or use a larger model that answers more concisely",
                tokens_used=spent,
            ) from error
        raise ModelOutputError(
            f"the model's reply to {ref} did not parse as {self.schema.__name__} "
            f"in {attempts} attempts: {error or 'no structured reply'}",
            fix="serve the model where response_format json_schema is enforced (llama.cpp, vLLM, SGLang), "
            "or use a larger model",
            tokens_used=spent,
        ) from error

    async def _reply(self, messages: Sequence[BaseMessage], *, seed: int | None, watch: bool) -> tuple[Any, Any, Any]:
        """(raw message, parsed reply or None, parsing error or None); `seed`: sampled, not greedy."""
        if self._with_raw is not None:
            with warnings.catch_warnings():  # langchain serialises the raw+parsed pair with a loose schema
                warnings.filterwarnings("ignore", message="Pydantic serializer warnings", category=UserWarning)
                out = await self._with_raw.ainvoke(list(messages))
            return out.get("raw"), out.get("parsed"), out.get("parsing_error")
        model = self._model
        if seed is not None:
            model = model.bind(**self._sampling, **({"seed": seed} if self._seeded else {}))
        # the last attempt is not stopped: a model that loops again still ends where the schema's bounds end it
        raw = await _watched(model, messages) if watch else await model.ainvoke(list(messages))
        try:
            return raw, await self._parser.ainvoke(raw), None
        except (OutputParserException, ValidationError) as exc:
            return raw, None, exc


def chat_model_name(model: Any) -> str:
    """The name a chat model serves under (errors and cached judgements name it), or its class's."""
    return str(getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__)


class RepeatingReply(Exception):
    """The reply fell into a loop (one short pattern over and over, or a run of digits) and was stopped there."""

    def __init__(self, text: str, loop: str, chunks: int) -> None:
        super().__init__(f"the reply {loop}; stopped after {len(text)} characters")
        self.text = text
        self.chunks = chunks  # a streamed chunk is about a token: what the server generated before it stopped


async def _watched(model: Any, messages: Sequence[BaseMessage]) -> Any:
    """The model's reply, streamed and checked as it grows; `RepeatingReply` as soon as it loops.

    A model that does not stream yields its whole reply at once (LangChain falls back to `ainvoke`), which is
    returned unchanged. `aclosing` closes the HTTP stream on the way out, so the server stops generating.
    """
    parts: list[Any] = []
    text = ""
    async with contextlib.aclosing(model.astream(list(messages))) as stream:
        async for chunk in stream:
            parts.append(chunk)
            if isinstance(chunk.content, str) and chunk.content:
                text += chunk.content
                if len(text) >= _DIGIT_RUN and (loop := _loop(text)):
                    raise RepeatingReply(text, loop, len(parts))
    if len(parts) == 1 or not all(isinstance(p, AIMessageChunk) for p in parts):
        return parts[-1] if parts else None
    return add_ai_message_chunks(parts[0], *parts[1:])  # one merge, not one per chunk


def _loop(text: str) -> str:
    """How `text`'s tail shows a loop, or "" when it does not."""
    if len(text) >= _DIGIT_RUN and text[-_DIGIT_RUN:].isdecimal():
        return f"wrote a run of {_DIGIT_RUN} digits"
    if len(text) < _REPEAT_WINDOW:
        return ""
    tail = text[-_REPEAT_WINDOW:]
    if period := _period(tail):
        return f"kept repeating {tail[-period:]!r}"
    # A counter defeats the exact check ("print(6 * 7)\nprint(6 * 8)\n...", "and9, and10, and11", a list of
    # numbers): read every run of digits as one symbol, and look again. (The exact check alone let a team's coder
    # reply run 1,651 tokens, 41 s, in one suite run.)
    if not any(c.isdecimal() for c in tail):
        return ""
    shape = _DIGITS.sub("0", tail)
    if period := _period(shape):
        return f"kept repeating {shape[-period:]!r} with other numbers"
    return ""


def _period(tail: str) -> int:
    """The shortest period (up to `_REPEAT_MAX_PERIOD`) that `tail` repeats with, at least 5 times; or 0."""
    # per streamed token, so the last character rules out most periods before any slice is made
    longest = min(_REPEAT_MAX_PERIOD, len(tail) // 5)
    return next((p for p in range(1, longest + 1) if tail[-1 - p] == tail[-1] and tail[p:] == tail[:-p]), 0)


def _unreachable_model(error: Exception, ref: str, model: str) -> Exception:
    """The client's error mapped to `BackendError` when the model server failed; anything else unchanged.

    openai's and httpx's errors are recognised by their base classes, imported only if the client already
    loaded them (a model that is neither cannot raise them).
    """
    openai = sys.modules.get("openai")
    httpx = sys.modules.get("httpx")
    if openai is not None and isinstance(error, openai.APIStatusError):
        message = str(getattr(error, "message", "") or error)[:300]
        return BackendError(
            f"the model server answered the request for {ref} (model {model!r}) with HTTP {error.status_code}: "
            f"{message}",
            fix="check that the server serves this model and accepts response_format json_schema; see its log",
        )
    reached = openai is not None and isinstance(error, openai.APIConnectionError)
    if reached or (httpx is not None and isinstance(error, httpx.HTTPError)):
        return BackendError(
            f"the model server for {ref} (model {model!r}) could not be reached or dropped the request: "
            f"{type(error).__name__}: {error}",
            fix="start the fleet (agentstack serve) or check AGENTSTACK_LLM_BASE_URL; a dead replica's log is under "
            "<home>/fleet/logs",
        )
    if openai is not None and isinstance(error, openai.APIError):  # a reply the client could not read
        return BackendError(
            f"the model server answered the request for {ref} (model {model!r}) with something that is not an "
            f"OpenAI chat completion: {type(error).__name__}: {error}",
            fix="check that the URL is the server's OpenAI-compatible /v1 API",
        )
    return error


def _is_chat_model(step: Any) -> bool:
    """A chat model, or one with request options bound (`response_format`...)."""
    return isinstance(step, BaseChatModel) or (
        isinstance(step, RunnableBinding) and isinstance(step.bound, BaseChatModel)
    )


def _retry_sampling(model: BaseChatModel) -> dict[str, Any]:
    """Request options for a sampled attempt but its seed: a temperature when the model is greedy and has one to
    set (nothing when it samples already, or has none)."""
    if "temperature" not in type(model).model_fields:
        return {}
    temperature = getattr(model, "temperature", None)
    return {"temperature": _RETRY_TEMPERATURE} if temperature is not None and temperature < _RETRY_TEMPERATURE else {}


def _cut_at_token_limit(error: Exception) -> bool:
    return type(error).__name__ == "LengthFinishReasonError"  # openai's; not imported: the model may be any


def _reply_text(raw: Any, error: Exception | None) -> str:
    content = getattr(raw, "content", None)
    return content if isinstance(content, str) else unfinished_reply_text(error)


def unfinished_reply_text(error: BaseException | None) -> str:
    """What the model wrote before the token limit cut it (openai's `LengthFinishReasonError` carries it) or
    before it was stopped repeating itself (`RepeatingReply`)."""
    if isinstance(error, RepeatingReply):
        return error.text
    choices = getattr(getattr(error, "completion", None), "choices", None)
    if not choices:
        return ""
    return str(getattr(getattr(choices[0], "message", None), "content", None) or "")


def _tokens(messages: Sequence[BaseMessage], raw: Any, error: Exception | None, limit: int | None) -> int:
    usage = getattr(raw, "usage_metadata", None)
    if usage and usage.get("total_tokens"):
        return int(usage["total_tokens"])
    # A reply the token limit cut short: openai's error carries the completion, and its usage when not streamed.
    cut_usage = getattr(getattr(error, "completion", None), "usage", None)
    if getattr(cut_usage, "total_tokens", None):
        return int(cut_usage.total_tokens)
    # no usage reported (e.g. a scripted model, or a reply lost to an error): about four characters per token
    prompt = sum(len(str(m.content)) for m in messages) // 4
    if isinstance(error, RepeatingReply):
        return max(1, prompt + error.chunks)
    if error is not None and _cut_at_token_limit(error) and limit:
        return prompt + limit  # streamed: the usage would have come after the cut; the limit is what was generated
    received = len(_reply_text(raw, error)) + len(str(getattr(raw, "tool_calls", "") or ""))
    return max(1, prompt + received // 4)
