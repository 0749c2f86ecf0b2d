"""What the door costs: the same requests through the agent server and the gateway with the guard on (an API key
checked, a requests-a-minute limit decided in Postgres, the audit recorded; at the gateway also personal data
masked and prompt injection screened) and off, side by side in one run.

Each server runs twice in this process on uvicorn: on a database with a key (every request presents it; the
key's limit is high enough never to refuse, so the limiter's upsert runs on every request) and on one with no
key (the agent server's door is open; the gateway has no door at all). The gateway's fleet is one `external`
model on a stub OpenAI server in this process, answering at once, so the gateway's own time is all there is to
see. Requests go one at a time, on and off alternating so drift hits both alike; added = on - off at each
percentile. Ends with one JSON line: `p99_added_ms_gateway` (target < 2), `p99_added_ms_api`, the p50s, and the
detectors' figures: `pii_f1` (with precision and recall) on the labelled set `data/pii.jsonl`,
`injection_recall` and `injection_false_positive_rate` on `data/injection.jsonl` (and on its held-out lines).

    python bench/guard_overhead.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from _fleet import percentile
from _home import throwaway_settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentstack._net import free_port
from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraphs
from agentstack.checkpoint import open_saver
from agentstack.safety import Authenticator, KeyStore
from agentstack.safety._audit import AuditLog
from agentstack.safety._gateway_policy import GatewayPolicy
from agentstack.safety._injection import InjectionPolicy, InjectionScreen
from agentstack.safety._pii import PiiScanner
from agentstack.safety._pii_policy import PiiPolicy
from agentstack.serving import Fleet, FleetSpec, gateway_app

REPLY = {
    "id": "stub", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}  # fmt: skip


def stub_model() -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(REPLY)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def timed(pairs: dict[str, tuple[httpx.AsyncClient, str, str, Any]], requests: int) -> dict[str, list[float]]:
    """Each pair's request `requests` times, the pairs alternating; milliseconds per request."""
    timings: dict[str, list[float]] = {name: [] for name in pairs}
    for round_ in range(requests + 20):
        for name, (client, method, path, body) in pairs.items():
            started = time.perf_counter()
            answer = await client.request(method, path, json=body)
            elapsed = (time.perf_counter() - started) * 1000
            answer.raise_for_status()
            if round_ >= 20:  # the first rounds warm connections, pools and plans
                timings[name].append(elapsed)
    return timings


async def main(requests: int) -> dict[str, Any]:
    said = "Say yes. I am ana@example.com, +44 20 7946 0958: may I return order ORD-2024-118 after 30 days?"
    chat = {"model": "stub", "messages": [{"role": "user", "content": said}], "max_tokens": 1}
    async with AsyncExitStack() as stack:
        bare, keyed = [await stack.enter_async_context(throwaway_settings()) for _ in range(2)]
        bare_saver = await stack.enter_async_context(open_saver(settings=bare, pool_size=4))
        keyed_saver = await stack.enter_async_context(open_saver(settings=keyed, pool_size=4))
        keys = KeyStore(keyed_saver.conn)
        await keys.setup()
        key = (await keys.create("bench", rpm=10_000_000)).secret  # never refused: the upsert runs every time
        headers = {"x-api-key": key}

        api_off = await stack.enter_async_context(
            served(app_on(RunQueue(bare_saver.conn), ServedGraphs([]), workers=0))
        )
        api_on = await stack.enter_async_context(
            served(app_on(RunQueue(keyed_saver.conn), ServedGraphs([]), workers=0))
        )
        model = await stack.enter_async_context(served(stub_model()))
        spec = FleetSpec.from_data(
            {"models": [{"name": "stub", "backend": "external", "urls": [f"{model}/v1"]}], "canary": False}
        )
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentstack-bench-guard-")))
        fleet = await stack.enter_async_context(Fleet(spec, home=home))
        audit = await stack.enter_async_context(AuditLog(keyed_saver.conn))
        gateway_off = await stack.enter_async_context(served(gateway_app(fleet)))
        door = GatewayPolicy.create(
            Authenticator(keys), audit=audit, pii=PiiPolicy("mask"), injection=InjectionPolicy("flag")
        )
        gateway_on = await stack.enter_async_context(served(gateway_app(fleet, door)))

        clients = {
            name: await stack.enter_async_context(httpx.AsyncClient(base_url=url, headers=h, timeout=30))
            for name, url, h in (
                ("api_off", api_off, {}), ("api_on", api_on, headers),
                ("gateway_off", gateway_off, {}), ("gateway_on", gateway_on, headers),
            )
        }  # fmt: skip
        thread_off = (await clients["api_off"].post("/threads", json={})).json()["thread_id"]
        thread_on = (await clients["api_on"].post("/threads", json={})).json()["thread_id"]
        timings = await timed(
            {
                "api_off": (clients["api_off"], "GET", f"/threads/{thread_off}", None),
                "api_on": (clients["api_on"], "GET", f"/threads/{thread_on}", None),
                "gateway_off": (clients["gateway_off"], "POST", "/v1/chat/completions", chat),
                "gateway_on": (clients["gateway_on"], "POST", "/v1/chat/completions", chat),
            },
            requests,
        )
    result: dict[str, Any] = {}
    for server in ("api", "gateway"):
        for q in (50, 99):
            on, off = percentile(timings[f"{server}_on"], q), percentile(timings[f"{server}_off"], q)
            print(f"{server:8} p{q}: off {off:6.2f} ms, on {on:6.2f} ms, added {on - off:+.2f} ms")
            result[f"p{q}_added_ms_{server}"] = round(on - off, 3)
    result["requests"] = requests
    result |= pii_scores() | injection_scores()
    return result


def injection_scores() -> dict[str, float]:
    """The injection screen on the labelled set (data/injection.jsonl: attacks in nine languages and shapes, and
    benign texts, security questions among them); `held_out`: the lines written after the screen was tuned."""
    screen = InjectionScreen()
    counts = {"all": [0, 0, 0, 0], "held_out": [0, 0, 0, 0]}  # caught, missed, false alarm, passed
    for line in (Path(__file__).parent / "data" / "injection.jsonl").read_text().splitlines():
        item = json.loads(line)
        flagged = screen.screen(item["text"]).flagged
        slot = (0 if flagged else 1) if item["injection"] else (2 if flagged else 3)
        for name in ("all", "held_out") if item.get("held_out") else ("all",):
            counts[name][slot] += 1
    scores = {}
    for name, (caught, missed, false, passed) in counts.items():
        suffix = "" if name == "all" else "_held_out"
        scores[f"injection_recall{suffix}"] = round(caught / (caught + missed), 3)
        scores[f"injection_false_positive_rate{suffix}"] = round(false / (false + passed), 3)
        print(f"injection ({name}): {caught} caught, {missed} missed, {false} false alarms, {passed} passed")
    return scores


def pii_scores() -> dict[str, float]:
    """The PII detectors on the labelled set (data/pii.jsonl: kinds and hard negatives), by (kind, value)."""
    scanner = PiiScanner()
    tp = fp = fn = 0
    for line in (Path(__file__).parent / "data" / "pii.jsonl").read_text().splitlines():
        item = json.loads(line)
        want = {(kind, value) for kind, value in item["pii"]}
        got = {(f.kind, f.value) for f in scanner.find(item["text"])}
        tp, fp, fn = tp + len(want & got), fp + len(got - want), fn + len(want - got)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"PII: {tp} found, {fp} false, {fn} missed: precision {precision:.3f}, recall {recall:.3f}")
    f1 = 2 * precision * recall / (precision + recall)
    return {"pii_f1": round(f1, 3), "pii_precision": round(precision, 3), "pii_recall": round(recall, 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="300 requests per server and side")
    size.add_argument("--smoke", action="store_true", help="10 requests per server and side")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(10 if args.smoke else 300 if args.quick else 2000))))
