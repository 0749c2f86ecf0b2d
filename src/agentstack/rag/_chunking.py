"""Chunkers built on llama-index node parsers, sized in the embedding model's own tokens.

- `ParentChildChunker`: `HierarchicalNodeParser` with two levels. Leaves (small, precise) are indexed and
  searched; parents (the surrounding passage) are stored for context expansion.
- `SemanticChunker`: `SemanticSplitterNodeParser` cuts where the embedding of consecutive sentences
  changes most; a semantic chunk longer than the embedder's window is split again, so nothing is truncated.

Chunk ids derive from the document's fingerprint and position, so re-chunking the same content gives the
same ids and a changed document gets new ones (the index swaps them without a window of missing chunks).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from agentstack._optional import require
from agentstack.errors import ConfigError
from agentstack.rag._embeddings import Embedder
from agentstack.rag._types import Chunk, Document, content_id

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode

__all__ = ["Chunker", "ParentChildChunker", "SemanticChunker"]


def _llama_index() -> Any:
    """llama-index's core, imported on first use: only chunking needs it."""
    require("llama_index.core", extra="local", feature="chunking documents")
    import llama_index.core.node_parser
    import llama_index.core.schema

    return llama_index.core


class Chunker(Protocol):
    """Turns a document into chunks; `signature` changes whenever the chunks it makes would."""

    @property
    def signature(self) -> str: ...
    async def achunk(self, document: Document, fingerprint: str) -> list[Chunk]: ...


class ParentChildChunker:
    """Leaves of `leaf_tokens` inside parents of `parent_tokens` (sizes in the embedder's tokens)."""

    def __init__(self, embedder: Embedder, *, parent_tokens: int = 512, leaf_tokens: int = 128, overlap: int = 16):
        if not 0 < leaf_tokens <= embedder.max_tokens:
            raise ConfigError(
                f"leaf_tokens={leaf_tokens} must be between 1 and the embedder's window ({embedder.max_tokens})",
                fix=f"use leaf_tokens <= {embedder.max_tokens}",
            )
        if parent_tokens < leaf_tokens or overlap >= leaf_tokens:
            raise ConfigError(
                f"parent_tokens={parent_tokens}, leaf_tokens={leaf_tokens}, overlap={overlap}: parents must be at "
                "least as large as leaves and the overlap smaller than a leaf",
                fix="for example parent_tokens=512, leaf_tokens=128, overlap=16",
            )
        self._signature = f"parent-child:{parent_tokens}/{leaf_tokens}/{overlap}:{embedder.name}"
        parsers = _llama_index().node_parser
        splitters = {
            f"size_{size}": parsers.SentenceSplitter(
                chunk_size=size, chunk_overlap=overlap, tokenizer=embedder.tokenize
            )
            for size in (parent_tokens, leaf_tokens)
        }
        self._parser = parsers.HierarchicalNodeParser.from_defaults(
            node_parser_ids=list(splitters), node_parser_map=splitters, include_prev_next_rel=False
        )

    @property
    def signature(self) -> str:
        return self._signature

    async def achunk(self, document: Document, fingerprint: str) -> list[Chunk]:
        return await asyncio.to_thread(self._chunk, document, fingerprint)

    def _chunk(self, document: Document, fingerprint: str) -> list[Chunk]:
        core = _llama_index()
        NodeRelationship = core.schema.NodeRelationship
        nodes = self._parser.get_nodes_from_documents([core.Document(text=document.text)])
        parents = [n for n in nodes if NodeRelationship.PARENT not in n.relationships]
        leaves = [n for n in nodes if NodeRelationship.PARENT in n.relationships]
        ids = {n.node_id: content_id(fingerprint, "parent", str(i)) for i, n in enumerate(parents)}
        chunks = [_chunk(document, ids[n.node_id], n, "parent", i, None) for i, n in enumerate(parents)]
        for i, node in enumerate(leaves):
            parent = ids[node.relationships[NodeRelationship.PARENT].node_id]  # type: ignore[union-attr]
            chunks.append(_chunk(document, content_id(fingerprint, "leaf", str(i)), node, "leaf", i, parent))
        return chunks


class SemanticChunker:
    """Chunks at semantic breakpoints (`breakpoint_percentile` of sentence-to-sentence embedding distance)."""

    def __init__(self, embedder: Embedder, *, buffer_size: int = 1, breakpoint_percentile: int = 95) -> None:
        self._embedder = embedder
        self._buffer_size = buffer_size
        self._percentile = breakpoint_percentile
        self._signature = f"semantic:{buffer_size}/{breakpoint_percentile}:{embedder.name}"
        self._fit = _llama_index().node_parser.SentenceSplitter(
            chunk_size=embedder.max_tokens, chunk_overlap=0, tokenizer=embedder.tokenize
        )

    @property
    def signature(self) -> str:
        return self._signature

    async def achunk(self, document: Document, fingerprint: str) -> list[Chunk]:
        loop = asyncio.get_running_loop()

        def embed(texts: list[str]) -> list[list[float]]:
            sync = getattr(self._embedder, "embed", None)
            if sync is not None:
                return sync(texts)  # type: ignore[no-any-return]
            # An async-only embedder (an HTTP endpoint): run it on the caller's loop from this worker thread.
            return asyncio.run_coroutine_threadsafe(self._embedder.aembed_documents(texts), loop).result()

        return await asyncio.to_thread(self._chunk, document, fingerprint, embed)

    def _chunk(
        self, document: Document, fingerprint: str, embed: Callable[[list[str]], list[list[float]]]
    ) -> list[Chunk]:
        core = _llama_index()
        parser = core.node_parser.SemanticSplitterNodeParser(
            embed_model=_function_embedding(embed),
            buffer_size=self._buffer_size,
            breakpoint_percentile_threshold=self._percentile,
            include_prev_next_rel=False,
        )
        semantic = parser.get_nodes_from_documents([core.Document(text=document.text)])
        fitted = self._fit.get_nodes_from_documents([core.Document(text=n.get_content()) for n in semantic])
        return [
            _chunk(document, content_id(fingerprint, "leaf", str(i)), n, "leaf", i, None) for i, n in enumerate(fitted)
        ]


def _chunk(document: Document, id_: str, node: BaseNode, kind: Any, position: int, parent: str | None) -> Chunk:
    return Chunk(
        id=id_,
        doc_id=document.doc_id,
        source=document.source,
        text=node.get_content(),
        kind=kind,
        position=position,
        parent_id=parent,
        metadata=document.metadata,
    )


def _function_embedding(embed: Callable[[list[str]], list[list[float]]]) -> Any:
    """llama-index's embedding interface over a plain function (the semantic splitter calls it sync)."""
    return _function_embedding_class()(model_name="agentstack", embed_batch_size=64, embed=embed)


@functools.cache
def _function_embedding_class() -> type:
    """The class, made once: llama-index is imported on first use, and a pydantic class costs to build."""
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr

    class FunctionEmbedding(BaseEmbedding):
        _embed: Callable[[list[str]], list[list[float]]] = PrivateAttr()

        def __init__(self, *, embed: Callable[[list[str]], list[list[float]]], **options: Any) -> None:
            super().__init__(**options)
            self._embed = embed

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._embed(texts)

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._embed([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._embed([query])[0]

        async def _aget_text_embeddings(self, texts: Sequence[str]) -> list[list[float]]:  # type: ignore[override]
            return self._embed(list(texts))

    return FunctionEmbedding
