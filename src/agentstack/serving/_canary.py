"""The startup canary: one real request per replica that must come back in the expected shape.

Health endpoints say a server is up, not that it does what agents need. A chat model must return
JSON that validates against a schema it was sent; a server that silently drops the schema (as vLLM
does for the old `guided_json` field) would otherwise break every structured-output node later,
far from the cause.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from agentstack.errors import BackendError
from agentstack.serving._backends import Backend
from agentstack.serving._spec import ModelSpec

__all__ = ["run_canary"]


class CanaryReply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: bool
    confidence: int


def _schema() -> dict[str, Any]:
    schema = CanaryReply.model_json_schema()
    schema["additionalProperties"] = False
    schema["properties"]["confidence"].update(minimum=0, maximum=100)
    return schema


async def run_canary(client: httpx.AsyncClient, base_url: str, spec: ModelSpec, backend: Backend) -> None:
    """Raise `BackendError` unless the replica at base_url answers one request of its task correctly."""
    where = f"model {spec.name!r} at {base_url}"
    if spec.task == "chat":
        body = {
            "model": spec.name,
            "messages": [{"role": "user", "content": "Is 2 + 2 equal to 4? Reply as JSON with answer and confidence."}],
            "max_tokens": 64,
            "temperature": 0,
            **backend.structured_output(_schema(), "canary"),
        }
        data = await _post(client, f"{base_url}/v1/chat/completions", body, where)
        content = data["choices"][0]["message"].get("content") or ""
        try:
            CanaryReply.model_validate(json.loads(content))
        except (ValueError, ValidationError) as exc:
            raise BackendError(
                f"{where} ignored the JSON schema of a structured-output request; it replied {content[:200]!r}",
                fix="serve it with a backend version that honours response_format json_schema (see the pins in "
                "agentstack.serving), or disable the canary only if no graph asks this model for structured output",
            ) from exc
    elif spec.task == "embed":
        data = await _post(client, f"{base_url}/v1/embeddings", {"model": spec.name, "input": ["canary"]}, where)
        vector = data["data"][0]["embedding"]
        if not vector or not all(isinstance(x, int | float) for x in vector):
            raise BackendError(
                f"{where} returned an empty or non-numeric embedding", fix="check the model is an embedder"
            )
    else:
        body = {
            "model": spec.name,
            "query": "What is the capital of France?",
            "documents": ["Bananas are yellow.", "Paris is the capital of France."],
        }
        data = await _post(client, f"{base_url}/v1/rerank", body, where)
        scores = {r["index"]: r["relevance_score"] for r in data["results"]}
        if set(scores) != {0, 1}:
            raise BackendError(f"{where} did not score both canary documents: {data}", fix="check it is a reranker")


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        response = await client.post(url, json=body, timeout=120)
    except httpx.HTTPError as exc:
        raise BackendError(f"{where} failed the startup canary: {exc!r}", fix="see the replica's log") from exc
    if response.status_code != 200:
        raise BackendError(
            f"{where} answered the startup canary with HTTP {response.status_code}: {response.text[:300]}",
            fix="see the replica's log; the request used only standard OpenAI fields",
        )
    return response.json()
