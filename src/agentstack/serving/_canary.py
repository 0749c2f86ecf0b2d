"""The startup canary: one real request per replica that must come back in the expected shape.

Health endpoints say a server is up, not that it does what agents need. A chat model is asked
through `StructuredCall`, the one way agentstack's graphs ask for a pydantic reply, by a chat model
bound to that replica and speaking its backend's structured-output dialect: a server that silently
drops the schema (as vLLM does the old `guided_json` field) fails here, loudly, rather than breaking
every structured-output node later, far from the cause. Embedders and rerankers are asked one plain
request of their kind. Whatever goes wrong (refused connection, HTTP error, a reply that is not
JSON or lacks a key) is a `BackendError` naming the replica.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentstack._structured import StructuredCall, unfinished_reply_text
from agentstack.errors import BackendError, ModelOutputError
from agentstack.serving._backends._base import Backend
from agentstack.serving._clients import BorrowedTransport
from agentstack.serving._spec import ModelSpec

__all__ = ["CanaryReply", "run_canary"]

_TIMEOUT_S = 120.0
_T = TypeVar("_T", bound=BaseModel)
_LOG_FIX = "see the replica's log; the canary sends only standard OpenAI fields"


class CanaryReply(BaseModel):
    """What the chat canary asks for; a schema-constrained server can only answer in this shape."""

    model_config = ConfigDict(extra="forbid")
    answer: bool
    confidence: int = Field(ge=0, le=100)


class _Embedding(BaseModel):
    embedding: list[float] = Field(min_length=1)


class _Embeddings(BaseModel):
    data: list[_Embedding] = Field(min_length=1)


class _Score(BaseModel):
    index: int
    relevance_score: float


class _Rerank(BaseModel):
    results: list[_Score]


async def run_canary(transport: httpx.AsyncBaseTransport, base_url: str, spec: ModelSpec, backend: Backend) -> None:
    """Raise `BackendError` unless the replica at `base_url` answers one request of its task correctly.

    `transport` is the fleet's pool, borrowed (never closed here).
    """
    where = f"model {spec.name!r} at {base_url}"
    if spec.task == "chat":
        await _ask_chat(transport, base_url, spec, backend, where)
        return
    async with httpx.AsyncClient(transport=BorrowedTransport(transport), timeout=_TIMEOUT_S) as client:
        if spec.task == "embed":
            body: dict[str, Any] = {"model": spec.name, "input": ["canary"]}
            _parse(_Embeddings, await _post(client, f"{base_url}/v1/embeddings", body, where), where)
            return
        body = {
            "model": spec.name,
            "query": "What is the capital of France?",
            "documents": ["Bananas are yellow.", "Paris is the capital of France."],
        }
        reply = _parse(_Rerank, await _post(client, f"{base_url}/v1/rerank", body, where), where)
        if {r.index for r in reply.results} != {0, 1}:
            raise BackendError(
                f"{where} did not score both canary documents: {reply.model_dump()}", fix="check it is a reranker"
            )


async def _ask_chat(
    transport: httpx.AsyncBaseTransport, base_url: str, spec: ModelSpec, backend: Backend, where: str
) -> None:
    from langchain_openai import ChatOpenAI

    client = httpx.AsyncClient(transport=BorrowedTransport(transport, backend.dialect), timeout=_TIMEOUT_S)
    model = ChatOpenAI(
        model=spec.name,
        base_url=f"{base_url}/v1",
        api_key="agentstack-canary",  # type: ignore[arg-type]
        max_tokens=64,
        temperature=0,
        max_retries=0,  # a startup check fails fast; the fleet decides about restarts
        http_async_client=client,
    )
    question = [HumanMessage("Is 2 + 2 equal to 4? Give your answer and how confident you are, from 0 to 100.")]
    try:
        with _as_backend_error(where):
            await StructuredCall(model, CanaryReply).ask(question, ref="the startup canary")
    except ModelOutputError as exc:
        if _began_in_shape(exc):  # it kept the shape but never finished: not a dialect problem
            raise BackendError(
                f"{where} did not finish the canary's small structured reply: {exc.problem}", fix=_LOG_FIX
            ) from exc
        raise BackendError(
            f"{where} ignored the JSON schema of a structured-output request: {exc.problem}",
            fix=f"serve it with a backend version that honours its structured-output dialect "
            f"({backend.dialect.name}; see the pins in agentstack.serving), or disable the canary only if no graph "
            "asks this model for structured output",
        ) from exc
    except BackendError as exc:  # StructuredCall says how the server failed; the canary says which replica
        raise BackendError(f"{where} failed the startup canary: {exc.problem}", fix=exc.fix or _LOG_FIX) from exc
    finally:
        await client.aclose()


def _began_in_shape(error: ModelOutputError) -> bool:
    """Whether a reply that never finished (cut at the token limit, or stopped repeating itself) had begun as a
    JSON object, as a schema-bound reply must.

    A server that ignores the schema can ramble in prose too; that is the dialect's fault, not the model's.
    """
    return unfinished_reply_text(error.__cause__).lstrip().startswith("{")


@contextlib.contextmanager
def _as_backend_error(where: str) -> Iterator[None]:
    """What odd replies make LangChain raise, as `BackendError`s (StructuredCall maps the client's own errors)."""
    try:
        yield
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a JSON reply of the wrong shape
        raise BackendError(
            f"{where} answered the startup canary with a reply that is not an OpenAI chat completion: {exc!r}",
            fix="check the server speaks the OpenAI API at /v1/chat/completions",
        ) from exc


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any], where: str) -> object:
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise BackendError(f"{where} failed the startup canary: {exc!r}", fix=_LOG_FIX) from exc
    if response.status_code != 200:
        raise BackendError(
            f"{where} answered the startup canary with HTTP {response.status_code}: {response.text[:300]}",
            fix=_LOG_FIX,
        )
    try:
        return response.json()
    except ValueError as exc:
        raise BackendError(
            f"{where} answered the startup canary with a body that is not JSON: {response.text[:200]!r}",
            fix="check the server speaks the OpenAI API at that URL",
        ) from exc


def _parse(model: type[_T], data: object, where: str) -> _T:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BackendError(
            f"{where} answered the startup canary in an unexpected shape ({exc.error_count()} problem(s): "
            f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}): {str(data)[:200]}",
            fix="check the model serves this task (an embedder for embed, a reranker for rerank)",
        ) from exc
