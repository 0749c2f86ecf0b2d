"""`StructuredCall`: the one way graph steps ask a model for a pydantic reply, and count its tokens."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnablePassthrough
from pydantic import BaseModel, Field, ValidationError

from agentstack._structured import StructuredCall
from agentstack.errors import ModelOutputError
from agentstack.prompts import Prompt
from agentstack.testing import ScriptedChatModel
from graph_helpers import LengthFinishReasonError

PROMPT = Prompt(graph="demo", name="ask", version=1, system="Answer briefly.", user="Q: {{ question }}")


class Verdict(BaseModel):
    ok: bool
    why: str = Field(max_length=50)


class WrappedModel(ScriptedChatModel):
    """A chat model whose structured output is not `model | parser` (as some integrations build it)."""

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Any:
        structured = super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        return structured if include_raw else structured | RunnablePassthrough()


def verdict_reply(why: str, total_tokens: int, *, ok: bool = True) -> AIMessage:
    """A structured reply as chat models give it (a tool call), with the token usage a server reports."""
    usage = {"input_tokens": total_tokens - 5, "output_tokens": 5, "total_tokens": total_tokens}
    call = {"name": "Verdict", "args": {"ok": ok, "why": why}, "id": "c1", "type": "tool_call"}
    return AIMessage(content="", tool_calls=[call], usage_metadata=usage)


@pytest.mark.parametrize("model_type", [ScriptedChatModel, WrappedModel])
async def test_the_reply_is_parsed_and_its_tokens_counted(model_type: type[ScriptedChatModel]) -> None:
    model = model_type(replies=[verdict_reply("fine", 42)])
    call = StructuredCall(model, Verdict)
    assert (call._with_raw is None) == (model_type is ScriptedChatModel)  # both paths are covered
    verdict, tokens = await call(PROMPT, question="is it?")
    assert verdict == Verdict(ok=True, why="fine") and tokens == 42
    assert model.calls[0][-1].content == "Q: is it?"


@pytest.mark.parametrize("model_type", [ScriptedChatModel, WrappedModel])
async def test_a_reply_that_does_not_fit_the_schema_is_asked_for_once_more(model_type: type[ScriptedChatModel]) -> None:
    model = model_type(replies=[{"ok": True, "why": "x" * 80}, {"ok": False, "why": "short"}])
    verdict, _ = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict == Verdict(ok=False, why="short") and len(model.calls) == 2


@pytest.mark.parametrize("model_type", [ScriptedChatModel, WrappedModel])
async def test_two_replies_that_do_not_fit_are_a_clear_error(model_type: type[ScriptedChatModel]) -> None:
    model = model_type(replies=[{"ok": True, "why": "x" * 80}, "plain text, no structured reply"])
    with pytest.raises(ModelOutputError, match=r"reply to demo/ask@v1 did not parse as Verdict in 2 attempts") as bad:
        await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert "response_format json_schema" in str(bad.value) and len(model.calls) == 2


async def test_a_validation_error_raised_inside_the_model_call_is_retried_then_reported() -> None:
    """openai's client validates a streamed json_schema reply itself and raises pydantic's error from the call."""
    try:
        Verdict(ok=True, why="x" * 80)
    except ValidationError as exc:
        invalid = exc
    call = StructuredCall(ScriptedChatModel(replies=[invalid, invalid]), Verdict)
    with pytest.raises(ModelOutputError, match="did not parse as Verdict in 2 attempts"):
        await call(PROMPT, question="q")


async def test_a_reply_cut_at_the_token_limit_is_asked_for_once_more_and_both_count() -> None:
    model = ScriptedChatModel(replies=[LengthFinishReasonError(3100), verdict_reply("ok", 40)])
    verdict, tokens = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict == Verdict(ok=True, why="ok") and tokens == 3140


async def test_two_replies_cut_at_the_token_limit_say_so() -> None:
    model = ScriptedChatModel(replies=[LengthFinishReasonError(3100), LengthFinishReasonError(3100)])
    with pytest.raises(ModelOutputError, match=r"hit its token limit before the Verdict was complete \(2 attempts\)"):
        await StructuredCall(model, Verdict)(PROMPT, question="q")


async def test_the_tokens_of_a_reply_that_did_not_parse_count_too() -> None:
    model = ScriptedChatModel(replies=[verdict_reply("x" * 80, 70), verdict_reply("short", 50)])
    verdict, tokens = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict.why == "short" and tokens == 120


class GreedyModel(ScriptedChatModel):
    """A scripted model with a temperature, like ChatOpenAI's, that records the options of each call."""

    temperature: float | None = 0.0
    options: list[dict[str, Any]] = Field(default_factory=list)

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        self.options.append({k: v for k, v in kwargs.items() if k == "temperature"})
        return super()._generate(messages, stop, run_manager, **kwargs)


async def test_a_greedy_model_is_asked_again_at_a_sampling_temperature() -> None:
    """Asked again at temperature 0, a model that rambled into the token limit would ramble the same way."""
    model = GreedyModel(replies=[LengthFinishReasonError(3100), verdict_reply("ok", 40)])
    verdict, _ = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict.why == "ok"
    assert "temperature" not in model.options[0] and model.options[1]["temperature"] == 0.7
