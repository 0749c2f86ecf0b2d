"""Hybrid retrieval: ingestion into Milvus (dense + BM25), reciprocal rank fusion, reranking, graph RAG.

    async with open_retrieval(settings) as rag:             # index, embedder, reranker from Settings
        await rag.ingestor.aingest_paths(["docs/"])
        result = await rag.retriever.aretrieve("how do I resume a thread?", k=5)

Or build the parts yourself:

    embedder = LocalEmbedder()                              # all-MiniLM-L6-v2 from PyPI, offline
    index = await MilvusIndex.open(home / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
    await Ingestor(index, embedder).aingest_paths(["docs/"])
    result = await HybridRetriever(index, embedder).aretrieve("how do I resume a thread?", k=5)

Only what users call is exported here; the rest (filter expressions, entity keys, the local FalkorDB
server, the fusion formula, loaders) lives in private modules and may change.
"""

from agentstack.rag._adapters import LangChainRetriever, llama_index_retriever, retrieval_tool
from agentstack.rag._chunking import Chunker, ParentChildChunker, SemanticChunker
from agentstack.rag._embeddings import Embedder, LocalEmbedder, OpenAIEmbedder
from agentstack.rag._graph import (
    Extraction,
    GraphExtractor,
    GraphIngestor,
    GraphResult,
    GraphRetriever,
    GraphStore,
    KnowledgeGraph,
    open_graph_store,
)
from agentstack.rag._index import MilvusIndex
from agentstack.rag._ingest import Ingestor, IngestReport
from agentstack.rag._rerank import CohereReranker, HttpReranker, Reranker
from agentstack.rag._retriever import HybridRetriever
from agentstack.rag._setup import Retrieval, open_knowledge_graph, open_retrieval
from agentstack.rag._types import Chunk, Document, RetrievalResult, ScoredChunk

__all__ = [
    "Chunk",
    "Chunker",
    "CohereReranker",
    "Document",
    "Embedder",
    "Extraction",
    "GraphExtractor",
    "GraphIngestor",
    "GraphResult",
    "GraphRetriever",
    "GraphStore",
    "HttpReranker",
    "HybridRetriever",
    "IngestReport",
    "Ingestor",
    "KnowledgeGraph",
    "LangChainRetriever",
    "LocalEmbedder",
    "MilvusIndex",
    "OpenAIEmbedder",
    "ParentChildChunker",
    "Reranker",
    "Retrieval",
    "RetrievalResult",
    "ScoredChunk",
    "SemanticChunker",
    "llama_index_retriever",
    "open_graph_store",
    "open_knowledge_graph",
    "open_retrieval",
    "retrieval_tool",
]
