"""Hybrid retrieval: ingestion into Milvus (dense + BM25), reciprocal rank fusion, reranking.

embedder = LocalEmbedder()                                  # all-MiniLM-L6-v2 from PyPI, offline
index = await MilvusIndex.open(home / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
await Ingestor(index, embedder).aingest_paths(["docs/"])
result = await HybridRetriever(index, embedder).aretrieve("how do I resume a thread?", k=5)
"""

from agentstack.rag._adapters import LangChainRetriever, llama_index_retriever, retrieval_tool
from agentstack.rag._chunking import Chunker, ParentChildChunker, SemanticChunker
from agentstack.rag._embeddings import DEFAULT_EMBEDDING_MODEL, Embedder, LocalEmbedder, OpenAIEmbedder
from agentstack.rag._falkordb_server import LocalFalkorDB
from agentstack.rag._graph import (
    Extraction,
    FalkorDBStore,
    GraphExtractor,
    GraphIngestor,
    GraphPath,
    GraphResult,
    GraphRetriever,
    GraphStore,
    KnowledgeGraph,
    Neo4jStore,
    entity_key,
    open_graph_store,
)
from agentstack.rag._index import MilvusIndex, filter_expression
from agentstack.rag._ingest import Ingestor, IngestReport
from agentstack.rag._loaders import SUPPORTED_SUFFIXES, expand_paths, load_document
from agentstack.rag._rerank import CohereReranker, HttpReranker, Reranker
from agentstack.rag._retriever import HybridRetriever, reciprocal_rank_fusion
from agentstack.rag._setup import Retrieval, open_knowledge_graph, open_retrieval, reranker_from
from agentstack.rag._types import Chunk, Document, RetrievalResult, ScoredChunk

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "SUPPORTED_SUFFIXES",
    "Chunk",
    "Chunker",
    "CohereReranker",
    "Document",
    "Embedder",
    "Extraction",
    "FalkorDBStore",
    "GraphExtractor",
    "GraphIngestor",
    "GraphPath",
    "GraphResult",
    "GraphRetriever",
    "GraphStore",
    "KnowledgeGraph",
    "LocalFalkorDB",
    "Neo4jStore",
    "HttpReranker",
    "HybridRetriever",
    "IngestReport",
    "LangChainRetriever",
    "Ingestor",
    "LocalEmbedder",
    "MilvusIndex",
    "OpenAIEmbedder",
    "ParentChildChunker",
    "Reranker",
    "Retrieval",
    "RetrievalResult",
    "ScoredChunk",
    "SemanticChunker",
    "entity_key",
    "expand_paths",
    "filter_expression",
    "llama_index_retriever",
    "load_document",
    "open_graph_store",
    "open_knowledge_graph",
    "open_retrieval",
    "reciprocal_rank_fusion",
    "reranker_from",
    "retrieval_tool",
]
