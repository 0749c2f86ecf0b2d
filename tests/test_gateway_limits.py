"""Tokens a minute at the gateway, with the real `openai` client: a request is admitted on an estimate, the reply's
real usage is charged (or refunded) after it, the key over its limit gets a 429 naming it, and the audit holds
each request's tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentstack.checkpoint import PoolSaver
from agentstack.safety import Authenticator, KeyStore
from agentstack.safety._audit import AuditLog
from agentstack.safety._gateway_policy import GatewayPolicy
from agentstack.safety._limits import RequestLimits
from agentstack.serving import Fleet, FleetSpec, gateway_app
from api_helpers import serving


def costly_model(tokens: int) -> Starlette:
    """Answers every chat in a word, reporting that it used `tokens` tokens."""

    async def chat(request: Request) -> JSONResponse:
        await request.body()
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": tokens - 1, "completion_tokens": 1, "total_tokens": tokens}
        return JSONResponse(
            {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice], "usage": usage}
        )

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


@pytest.mark.allow_model_requests
async def test_real_usage_is_charged_and_a_key_over_its_tokens_is_refused(saver: PoolSaver, tmp_path: Path) -> None:
    keys = KeyStore(saver.conn)
    await keys.setup()
    key = await keys.create("app", tpm=300)
    async with serving(costly_model(250)) as model_url:
        spec = FleetSpec.from_data(
            {"models": [{"name": "m", "backend": "external", "urls": [f"{model_url}/v1"]}], "canary": False}
        )
        async with (
            Fleet(spec, home=tmp_path) as fleet,
            AuditLog(saver.conn) as audit,
            serving(gateway_app(fleet, GatewayPolicy.create(Authenticator(keys), audit=audit))) as url,
        ):
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key.secret, max_retries=0)
            ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
            await client.chat.completions.create(**ask)  # admitted on ~11 tokens, charged 250
            await asyncio.sleep(0.2)  # the charge is settled after the reply
            await client.chat.completions.create(**ask)  # 250 + 11 fit in 300: admitted, then charged 250
            await asyncio.sleep(0.2)
            with pytest.raises(openai.RateLimitError, match="over its limit of 300 tokens a minute") as refused:
                await client.chat.completions.create(**ask)
            assert int(refused.value.response.headers["retry-after"]) >= 1
            assert orjson.loads(refused.value.response.content)["error"]["code"] == "tokens_per_minute"
    tokens = [e["tokens"] for e in await AuditLog(saver.conn).read() if e["path"] == "/v1/chat/completions"]
    assert tokens == [None, 250, 250]  # newest first: the refused request used nothing


@pytest.mark.allow_model_requests
async def test_a_key_within_a_budget_pays_by_the_price_table_and_stops_at_it(saver: PoolSaver, tmp_path: Path) -> None:
    keys = KeyStore(saver.conn)
    await keys.setup()
    key = await keys.create("trial", budget_usd=0.1, budget_period="day")
    prices = {"m": {"input": 1.0, "output": 2.0}}  # USD per 1,000 tokens: 249 in + 1 out = $0.251 a reply
    async with serving(costly_model(250)) as model_url:
        urls = [f"{model_url}/v1"]
        models = [{"name": name, "backend": "external", "urls": urls} for name in ("m", "free")]
        spec = FleetSpec.from_data({"models": models, "canary": False})
        async with (
            Fleet(spec, home=tmp_path) as fleet,
            AuditLog(saver.conn) as audit,
            serving(gateway_app(fleet, GatewayPolicy.create(Authenticator(keys), audit=audit, prices=prices))) as url,
        ):
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key.secret, max_retries=0)
            ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
            with pytest.raises(openai.APIStatusError, match="model 'free' has no price") as unpriced:
                await client.chat.completions.create(model="free", **ask)
            assert unpriced.value.status_code == 402
            await client.chat.completions.create(model="m", **ask)  # within the budget when it started
            await asyncio.sleep(0.2)  # the cost is added after the reply
            with pytest.raises(openai.APIStatusError, match=r"spent \$0.2510 of its \$0.1 a day") as over:
                await client.chat.completions.create(model="m", **ask)
            assert over.value.status_code == 402 and over.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    entries = [e for e in await AuditLog(saver.conn).read() if e["path"] == "/v1/chat/completions"]
    assert [(e["status"], e["decision"], e["cost_usd"]) for e in entries] == [
        (402, None, None), (200, None, pytest.approx(0.251)), (402, None, None)
    ]  # fmt: skip


@pytest.mark.allow_model_requests
async def test_what_one_request_may_ask_is_bounded(saver: PoolSaver, tmp_path: Path) -> None:
    sent: list[dict[str, object]] = []

    async def chat(request: Request) -> JSONResponse:
        sent.append(orjson.loads(await request.body()))
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]})

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    recording = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
    limits = RequestLimits(max_input_chars=1_000, max_tokens_ceiling=512)
    async with serving(recording) as model_url:
        spec = FleetSpec.from_data(
            {"models": [{"name": "m", "backend": "external", "urls": [f"{model_url}/v1"]}], "canary": False}
        )
        policy = GatewayPolicy.create(limits=limits)
        async with Fleet(spec, home=tmp_path) as fleet, serving(gateway_app(fleet, policy)) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            hi = [{"role": "user", "content": "hi"}]
            await client.chat.completions.create(model="m", messages=hi)
            assert sent[-1]["max_tokens"] == 512  # unsaid: the ceiling, so no request is unbounded
            await client.chat.completions.create(model="m", messages=hi, max_tokens=20)
            assert sent[-1]["max_tokens"] == 20
            with pytest.raises(openai.BadRequestError, match="max_tokens 4096 is above this gateway's ceiling of 512"):
                await client.chat.completions.create(model="m", messages=hi, max_tokens=4096)
            long = [{"role": "user", "content": "x" * 1_001}]
            with pytest.raises(openai.BadRequestError, match="holds 1001 characters; this server takes at most 1000"):
                await client.chat.completions.create(model="m", messages=long)
            assert len(sent) == 2  # the refused ones never reached the model
