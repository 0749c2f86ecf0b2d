"""The hybrid retriever as a LangChain retriever, a llama-index retriever and a LangChain/LangGraph tool.

All three are async: the Milvus client lives on the event loop that opened it, so a synchronous call
(which would need a second loop) is refused with the async spelling instead of hanging or crashing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangChainDocument
from langchain_core.retrievers import BaseRetriever as LangChainBaseRetriever
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from agentstack.errors import UserError
from agentstack.rag._index import FilterValue
from agentstack.rag._retriever import HybridRetriever
from agentstack.rag._types import ScoredChunk

__all__ = ["LangChainRetriever", "llama_index_retriever", "retrieval_tool"]


def _metadata(scored: ScoredChunk) -> dict[str, Any]:
    return {
        **scored.chunk.metadata,
        "chunk_id": scored.chunk.id,
        "source": scored.chunk.source,
        "kind": scored.chunk.kind,
        "legs": dict(scored.legs),
        "fused_score": scored.fused_score,
        "rerank_score": scored.rerank_score,
        "dense_score": scored.dense_score,
        "bm25_score": scored.bm25_score,
    }


class LangChainRetriever(LangChainBaseRetriever):
    """`await LangChainRetriever(retriever=r, k=5).ainvoke("query")` -> LangChain documents with provenance."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: SkipValidation[HybridRetriever]  # a dataclass of protocols: nothing for pydantic to check
    k: int = 5
    filters: SkipValidation[Mapping[str, FilterValue] | None] = None
    expand_parents: bool = False

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Any]:
        raise UserError(
            "agentstack's retriever is async (its Milvus client lives on an event loop)",
            fix="use `await retriever.ainvoke(query)`",
        )

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[LangChainDocument]:
        result = await self.retriever.aretrieve(query, self.k, self.filters, expand_parents=self.expand_parents)
        return [LangChainDocument(page_content=s.text, metadata=_metadata(s)) for s in result]


def llama_index_retriever(
    retriever: HybridRetriever, k: int = 5, filters: Mapping[str, FilterValue] | None = None
) -> Any:
    """A llama-index `BaseRetriever` (use `await r.aretrieve(query)`); nodes carry agentstack's provenance."""
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    class AgentstackLlamaRetriever(BaseRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            raise UserError(
                "agentstack's retriever is async (its Milvus client lives on an event loop)",
                fix="use `await retriever.aretrieve(query)`",
            )

        async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            result = await retriever.aretrieve(query_bundle.query_str, k, filters)
            return [
                NodeWithScore(node=TextNode(id_=s.chunk.id, text=s.text, metadata=_metadata(s)), score=s.score)
                for s in result
            ]

    return AgentstackLlamaRetriever()


class _SearchArgs(BaseModel):
    # Bounded, as every field a model fills: a grammar-constrained server then stops a rambling small model.
    query: str = Field(max_length=300, description="What to look for, as a short natural-language question or phrase.")


def retrieval_tool(
    retriever: HybridRetriever,
    *,
    k: int = 5,
    filters: Mapping[str, FilterValue] | None = None,
    name: str = "search_documents",
    description: str = "Search the indexed documents. Returns passages, each tagged with an id to cite.",
) -> StructuredTool:
    """A tool for agents: the model reads passages tagged `[chunk_id]`; the artifact keeps the full results."""

    async def search(query: str) -> tuple[str, list[ScoredChunk]]:
        result = await retriever.aretrieve(query, k, filters)
        if not result.chunks:
            return "No passages matched.", []
        text = "\n\n".join(f"[{s.chunk.id}] ({s.chunk.source})\n{s.text}" for s in result)
        return text, result.chunks

    return StructuredTool.from_function(
        coroutine=search,
        name=name,
        description=description,
        args_schema=_SearchArgs,
        response_format="content_and_artifact",
    )
