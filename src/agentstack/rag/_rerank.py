"""Rerankers behind one Cohere-compatible interface: Cohere's API, or a self-hosted `/v1/rerank`.

vLLM, llama.cpp and TEI serve `/v1/rerank` with the same request (`model`, `query`, `documents`,
`top_n`) and the same answer (`results[].index`, `results[].relevance_score`) as Cohere's v2 API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import httpx

from agentstack._optional import require
from agentstack.errors import RetrievalError

__all__ = ["CohereReranker", "HttpReranker", "Reranker"]


class Reranker(Protocol):
    """Scores documents against a query; returns (index into `documents`, relevance), best first."""

    @property
    def name(self) -> str: ...
    async def arerank(self, query: str, documents: Sequence[str], top_n: int) -> list[tuple[int, float]]: ...
    async def aclose(self) -> None: ...


class CohereReranker:
    """Cohere's rerank API through the official `cohere` client (`base_url` points it elsewhere)."""

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "rerank-v3.5",
        base_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        cohere = require("cohere", extra="local", feature="Cohere reranking")
        options = {"base_url": base_url} if base_url else {}
        self._http = http_client or httpx.AsyncClient(timeout=60)
        self._client = cohere.AsyncClientV2(api_key=api_key, httpx_client=self._http, **options)
        self._model = model
        self._error = cohere.core.api_error.ApiError

    @property
    def name(self) -> str:
        return f"cohere:{self._model}"

    async def arerank(self, query: str, documents: Sequence[str], top_n: int) -> list[tuple[int, float]]:
        if not documents:
            return []
        try:
            response = await self._client.rerank(
                model=self._model, query=query, documents=list(documents), top_n=min(top_n, len(documents))
            )
        except self._error as exc:
            raise RetrievalError(
                f"Cohere rerank failed ({exc.status_code}): {exc.body}",
                fix="check COHERE_API_KEY and the rerank model name",
            ) from exc
        except httpx.HTTPError as exc:
            raise RetrievalError(f"Cohere rerank cannot be reached: {exc!r}", fix="check the network") from exc
        return [(r.index, float(r.relevance_score)) for r in response.results]

    async def aclose(self) -> None:
        await self._http.aclose()


class HttpReranker:
    """A self-hosted `/v1/rerank` endpoint (vLLM, llama.cpp, TEI, the agentstack fleet's gateway)."""

    def __init__(
        self, base_url: str, *, model: str, api_key: str | None = None, http_client: httpx.AsyncClient | None = None
    ) -> None:
        self._url = base_url.rstrip("/") + ("/rerank" if base_url.rstrip("/").endswith("/v1") else "/v1/rerank")
        self._model = model
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = http_client or httpx.AsyncClient(timeout=60)

    @property
    def name(self) -> str:
        return f"{self._url}:{self._model}"

    async def arerank(self, query: str, documents: Sequence[str], top_n: int) -> list[tuple[int, float]]:
        if not documents:
            return []
        body = {"model": self._model, "query": query, "documents": list(documents), "top_n": min(top_n, len(documents))}
        try:
            response = await self._client.post(self._url, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise RetrievalError(
                f"the rerank endpoint {self._url} cannot be reached: {exc!r}", fix="check the URL and the server"
            ) from exc
        if response.status_code != 200:
            raise RetrievalError(
                f"the rerank endpoint {self._url} answered {response.status_code}: {response.text[:300]}",
                fix=f"check that it serves the rerank model {self._model!r}",
            )
        try:
            ranked = [(int(r["index"]), float(r["relevance_score"])) for r in response.json()["results"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise RetrievalError(
                f"the rerank endpoint {self._url} answered with something that is not a rerank reply "
                f"({type(exc).__name__}: {exc}): {response.text[:200]!r}",
                fix="point rerank_url at a /v1/rerank endpoint (vLLM, llama.cpp, TEI)",
            ) from exc
        return sorted(ranked, key=lambda item: -item[1])[:top_n]

    async def aclose(self) -> None:
        await self._client.aclose()
