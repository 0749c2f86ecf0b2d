"""`StructuredCall`: the one way graph steps ask a model for a pydantic reply, and count its tokens."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnablePassthrough
from pydantic import BaseModel, Field, ValidationError

from agentstack._structured import StructuredCall
from agentstack.errors import ModelOutputError
from agentstack.prompts import Prompt
from agentstack.testing import ScriptedChatModel
from graph_helpers import LengthFinishReasonError
from stub_openai_server import chat_chunks, sse

PROMPT = Prompt(graph="demo", name="ask", version=1, system="Answer briefly.", user="Q: {{ question }}")


class Verdict(BaseModel):
    ok: bool
    why: str = Field(max_length=50)


class WrappedModel(ScriptedChatModel):
    """A chat model whose structured output is not `model | parser` (as some integrations build it)."""

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Any:
        structured = super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        return structured if include_raw else RunnablePassthrough() | structured


def verdict_reply(why: str, total_tokens: int, *, ok: bool = True) -> AIMessage:
    """A structured reply as a server constrained to the json_schema gives it (JSON text), with its token usage."""
    usage = {"input_tokens": total_tokens - 5, "output_tokens": 5, "total_tokens": total_tokens}
    return AIMessage(content=json.dumps({"ok": ok, "why": why}), usage_metadata=usage)


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


async def test_the_retry_warning_shows_how_the_cut_reply_ended(caplog: pytest.LogCaptureFixture) -> None:
    runaway = '{"ok": true, "why": "' + "0" * 3000
    model = ScriptedChatModel(replies=[LengthFinishReasonError(3100, runaway), verdict_reply("ok", 40)])
    await StructuredCall(model, Verdict)(PROMPT, question="q")
    (record,) = [r for r in caplog.records if "asking again" in r.getMessage()]
    assert "demo/ask@v1 did not parse as Verdict" in record.getMessage()
    assert f"it ended '{'0' * 120}'" in record.getMessage()  # the tail says what ran away


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
    seed: int | None = None
    options: list[dict[str, Any]] = Field(default_factory=list)

    def _message(self, messages: Any, **kwargs: Any) -> Any:  # every path (invoke, stream) asks through here
        self.options.append({k: v for k, v in kwargs.items() if k in ("temperature", "seed")})
        return super()._message(messages, **kwargs)


async def test_a_greedy_model_is_asked_again_at_a_sampling_temperature() -> None:
    """Asked again at temperature 0, a model that rambled into the token limit would ramble the same way."""
    model = GreedyModel(replies=[LengthFinishReasonError(3100), verdict_reply("ok", 40)])
    verdict, _ = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict.why == "ok"
    assert "temperature" not in model.options[0] and model.options[1]["temperature"] == 0.7


async def test_sampled_replies_are_seeded_so_a_rerun_samples_the_same_and_each_resample_its_own() -> None:
    """A judge asked again for its spread, or a step asked again after a bad reply, repeats on a rerun; the n-th
    and the m-th samples still differ (a seed each)."""

    async def seeds(resample: int) -> list[Any]:
        model = GreedyModel(replies=[LengthFinishReasonError(3100), verdict_reply("ok", 40)])
        await StructuredCall(model, Verdict)(PROMPT, resample=resample, question="q")
        return [o.get("seed") for o in model.options]

    assert await seeds(0) == [None, 1]  # greedy first, as ever; the retry samples, seeded
    assert await seeds(1) == await seeds(1) == [8, 9]
    assert await seeds(2) == [16, 17]


def completion(content: str, total_tokens: int, finish: str = "stop", *, stream: bool = True) -> httpx.Response:
    """An OpenAI chat completion as llama.cpp, vLLM and SGLang answer it: whole, or streamed as server-sent events
    (a chunk per word, then the finish reason, then the usage, as `stream_options.include_usage` asks)."""
    usage = {"prompt_tokens": total_tokens - 10, "completion_tokens": 10, "total_tokens": total_tokens}
    head = {"id": "chatcmpl-1", "created": 0, "model": "gemma"}
    if not stream:
        choice = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}
        return httpx.Response(200, json={**head, "object": "chat.completion", "choices": [choice], "usage": usage})
    body = sse(chat_chunks(head, content, finish, usage))
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


@pytest.mark.allow_model_requests  # a real ChatOpenAI, on a transport that answers in-process
async def test_chat_openai_takes_the_same_path_as_the_scripted_model() -> None:
    """ChatOpenAI's structured output is `model | refusal check | parser`: the call still keeps the raw reply
    without `include_raw`, sends the json_schema as `response_format`, and asks again at a sampling temperature."""
    from langchain_openai import ChatOpenAI

    requests: list[dict[str, Any]] = []
    replies = iter([('{"ok": true, "why": "' + "x" * 80 + '"}', 60), ('{"ok": false, "why": "no"}', 42)])

    def server(request: httpx.Request) -> httpx.Response:
        requests.append(json.loads(request.content))
        content, tokens = next(replies)
        return completion(content, tokens, stream=requests[-1].get("stream", False))

    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    model = ChatOpenAI(
        base_url="http://model/v1", api_key="none", model="gemma", temperature=0, http_async_client=client
    )
    call = StructuredCall(model, Verdict)
    assert call._with_raw is None and StructuredCall(ScriptedChatModel(), Verdict)._with_raw is None
    verdict, tokens = await call(PROMPT, question="is it?")
    # The refused reply counts too, but by estimate: ChatOpenAI validates a json_schema reply inside the call and
    # raises pydantic's error without the completion, so its reported usage (60) is not there to read.
    assert verdict == Verdict(ok=False, why="no") and 42 < tokens < 42 + 60
    assert [r["response_format"]["json_schema"]["name"] for r in requests] == ["Verdict", "Verdict"]
    assert [r["temperature"] for r in requests] == [0.0, 0.7]
    assert [r.get("seed") for r in requests] == [None, 1]  # the sampled attempt repeats on a rerun
    assert [r.get("stream", False) for r in requests] == [True, False]  # the first is watched as it grows
    await client.aclose()


async def test_the_scripted_model_binds_the_json_schema_as_response_format() -> None:
    model = ScriptedChatModel(replies=[verdict_reply("fine", 42)])
    bound = model.with_structured_output(Verdict).first
    assert bound.kwargs["response_format"]["type"] == "json_schema"
    assert bound.kwargs["response_format"]["json_schema"]["name"] == "Verdict"
    assert bound.kwargs["response_format"]["json_schema"]["schema"]["required"] == ["ok", "why"]


@pytest.mark.slow
@pytest.mark.allow_model_requests
async def test_a_streamed_call_counts_the_servers_tokens_like_a_direct_one(model_gateway: str, settings: Any) -> None:
    """Under `stream_run` (LangGraph's "messages" mode) the model streams; its usage must still be the server's."""
    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    from agentstack._stack import external_chat_model
    from fleet_helpers import MODEL

    model = external_chat_model(
        settings.model_copy(update={"llm_base_url": model_gateway, "llm_model": MODEL}), temperature=0, max_tokens=300
    )
    call = StructuredCall(model, Verdict)
    _, direct = await call(PROMPT, question="Is water wet?")

    class State(TypedDict):
        tokens: int

    async def ask(state: State) -> State:
        return {"tokens": (await call(PROMPT, question="Is water wet?"))[1]}

    graph = StateGraph(State).add_node("ask", ask).add_edge(START, "ask").add_edge("ask", END).compile()
    chunks, final = 0, None
    async for mode, payload in graph.astream({"tokens": 0}, stream_mode=["messages", "values"]):
        chunks += mode == "messages"
        final = payload if mode == "values" else final
    assert chunks > 1  # it did stream
    assert final is not None and final["tokens"] == direct  # the server's count, not a characters/4 estimate


LOOPING = '{"ok": true, "why": "' + "la " * 100


async def test_a_reply_that_loops_is_stopped_and_asked_for_again(caplog: pytest.LogCaptureFixture) -> None:
    model = GreedyModel(replies=[AIMessage(content=LOOPING), verdict_reply("ok", 40)])
    verdict, tokens = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict.why == "ok" and model.options[1]["temperature"] == 0.7  # the second attempt samples
    assert tokens > 40  # the stopped attempt counts (estimated: no usage came back)
    (record,) = [r for r in caplog.records if "asking again" in r.getMessage()]
    assert "the reply kept repeating 'la '" in record.getMessage()


async def test_a_run_of_random_digits_is_a_loop_too() -> None:
    """A repeat penalty (DRY) turns "0000..." into random digits: no pattern repeats, but nothing useful either."""
    digits = "".join(str(i * 7919 % 10) for i in range(150))  # prime steps: no period under 40
    model = ScriptedChatModel(replies=[AIMessage(content='{"why": "' + digits), verdict_reply("ok", 40)])
    verdict, _ = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict.why == "ok"


class Note(BaseModel):
    text: str = Field(max_length=400)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("".join(f"print(6 * {i})\n" for i in range(40)), "'print(0 * 0)\\n'"),
        ("well " + " ".join(f"and{i}," for i in range(80)), "' and0,'"),
        ("".join(f"(x) in {i}) {{x}} in {i + 1}) " for i in range(30)), "'(x) in 0) {x} in 0) '"),
        ('{"answer": "[' + ", ".join(str(i * i) for i in range(90)), "', 0'"),
    ],
)
def test_a_loop_with_a_counter_is_a_loop(text: str, shape: str) -> None:
    """Gemma's near-repeats: an exact period is broken by a number that changes on every line."""
    from agentstack._structured import _loop

    assert _loop(text) == f"kept repeating {shape} with other numbers"


async def test_a_stopped_loop_earns_one_more_watched_attempt_and_the_last_runs_to_its_end() -> None:
    """Stopping the last attempt too would turn a slow nonsense reply into a failed run; its bounds end it."""
    looping = '{"text": "' + "la " * 100
    last = '{"text": "' + "la " * 100 + '"}'  # stopped too, were it watched
    model = GreedyModel(replies=[AIMessage(content=looping), AIMessage(content=looping), AIMessage(content=last)])
    note, _ = await StructuredCall(model, Note)(PROMPT, question="q")
    assert note.text == "la " * 100
    assert [o.get("temperature") for o in model.options] == [None, 0.7, 0.7]


async def test_a_reply_that_does_not_parse_earns_no_extra_attempt() -> None:
    """Only a stopped loop is cheap enough to earn one: a refused parse costs a whole reply."""
    model = GreedyModel(
        replies=[AIMessage(content='{"text": 1}'), AIMessage(content='{"text": 2}'), verdict_reply("ok", 40)]
    )
    with pytest.raises(ModelOutputError, match="did not parse as Note in 2 attempts"):
        await StructuredCall(model, Note)(PROMPT, question="q")
    assert len(model.options) == 2


@pytest.mark.parametrize(
    "text",
    [
        "def total(xs):\n    s = 0\n    for x in xs:\n        s += x * x\n    return s\n\n\nprint(total([1, 2]))\n" * 2,
        json.dumps({"calls": [{"tool": "read_file", "args": {"path": "notes.txt"}}] * 4, "answer": ""}),
        "Threads resume from the last checkpoint in Postgres [S1]; the fleet restarts a crashed replica [S2]. " * 3,
        "x" * 199,
        "print(2 ** 100)  # 1267650600228229401496703205376, thirty-one digits",
        # numbers in prose and code, read as one symbol each, still do not repeat
        "Postgres 15.4 keeps 3 checkpoints per thread [S1]; retention runs every 600 s and deletes those older "
        "than 7 days [S2]; the fleet restarts a replica after 1, 2, 4 then 8 s [S3]; version 0.3.36 builds it.",
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\n"
        "print([fib(i) for i in range(10)])  # 0 1 1 2 3 5 8 13 21 34\nprint(6 * 7)\nprint(2 ** 10)\n",
    ],
)
def test_what_a_useful_reply_looks_like_is_not_a_loop(text: str) -> None:
    from agentstack._structured import _loop

    assert _loop(text) == ""


@pytest.mark.allow_model_requests  # a real ChatOpenAI, on a transport that answers in-process
async def test_a_streamed_reply_cut_at_the_limit_counts_the_limit() -> None:
    """openai raises on the finish reason, before the usage chunk arrives: the limit is what the server generated."""
    from langchain_openai import ChatOpenAI

    replies = iter([('{"ok": true, "why": "and so', 0, "length"), ('{"ok": true, "why": "yes"}', 42, "stop")])

    def server(request: httpx.Request) -> httpx.Response:
        return completion(*next(replies), stream=json.loads(request.content).get("stream", False))

    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    model = ChatOpenAI(base_url="http://m/v1", api_key="none", model="gemma", max_tokens=500, http_async_client=client)
    verdict, tokens = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict.why == "yes" and 500 + 42 < tokens < 500 + 42 + 20  # (and the prompt's estimate)
    await client.aclose()


@pytest.mark.allow_model_requests  # a real ChatOpenAI, on a transport that answers in-process
async def test_a_looping_stream_is_closed_so_the_server_stops_generating() -> None:
    from langchain_openai import ChatOpenAI

    sent = {"events": 0}

    async def endless() -> Any:
        head = {"id": "c", "created": 0, "model": "gemma", "object": "chat.completion.chunk"}
        first = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": '{"why": "'}}]}
        yield f"data: {json.dumps(first)}\n\n".encode()
        while True:  # a server stuck on one token, until the client hangs up
            sent["events"] += 1
            event = {**head, "choices": [{"index": 0, "delta": {"content": "0"}, "finish_reason": None}]}
            yield f"data: {json.dumps(event)}\n\n".encode()

    def server(request: httpx.Request) -> httpx.Response:
        if sent["events"]:  # asked again: a reply that ends
            return completion(
                '{"ok": true, "why": "done"}', 42, stream=json.loads(request.content).get("stream", False)
            )
        return httpx.Response(200, content=endless(), headers={"content-type": "text/event-stream"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    model = ChatOpenAI(base_url="http://model/v1", api_key="none", model="gemma", http_async_client=client)
    verdict, _ = await StructuredCall(model, Verdict)(PROMPT, question="q")
    assert verdict.why == "done" and sent["events"] < 150, sent  # it hung up about 100 digits in
    await client.aclose()
