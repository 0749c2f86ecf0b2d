"""Graph RAG: entities and relations extracted by an LLM into a graph store, retrieved by k-hop walks.

One Cypher vocabulary (the constants below) runs unchanged on FalkorDB (the local default) and Neo4j;
only index creation differs, so each store owns that one statement. The model:

    (:Entity {key, name, type}) -[:MENTIONED_IN]-> (:Chunk {id, doc_id, source})
    (:Entity) -[:RELATED {type, chunk_id, doc_id}]-> (:Entity)

Every relation keeps the chunk it was read from, so a path returned as context cites its sources.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, Field

from agentstack._optional import require
from agentstack._structured import StructuredCall
from agentstack.errors import ConfigError, RetrievalError
from agentstack.rag._types import Chunk

__all__ = [
    "Extraction",
    "FalkorDBStore",
    "GraphExtractor",
    "GraphIngestor",
    "GraphPath",
    "GraphResult",
    "GraphRetriever",
    "GraphStore",
    "KnowledgeGraph",
    "Neo4jStore",
    "entity_key",
    "open_graph_store",
]

UPSERT_CHUNK = """
MERGE (c:Chunk {id: $chunk_id}) SET c.doc_id = $doc_id, c.source = $source
WITH c
UNWIND $entities AS e
MERGE (n:Entity {key: e.key}) ON CREATE SET n.name = e.name, n.type = e.type
MERGE (n)-[:MENTIONED_IN]->(c)
"""
UPSERT_RELATIONS = """
UNWIND $relations AS r
MATCH (a:Entity {key: r.source}), (b:Entity {key: r.target})
MERGE (a)-[x:RELATED {type: r.type, chunk_id: $chunk_id}]->(b)
SET x.doc_id = $doc_id
"""
DELETE_DOCUMENT_RELATIONS = "MATCH ()-[r:RELATED {doc_id: $doc_id}]->() DELETE r"
DELETE_DOCUMENT_CHUNKS = "MATCH (c:Chunk {doc_id: $doc_id}) DETACH DELETE c"
DELETE_ORPHAN_ENTITIES = """
MATCH (n:Entity)
OPTIONAL MATCH (n)-[r]-()
WITH n, count(r) AS degree
WHERE degree = 0
DELETE n
"""
LINK_ENTITIES = """
MATCH (n:Entity)
WHERE n.key IN $keys OR $text CONTAINS (' ' + n.key + ' ')
RETURN n.key, n.name, n.type
"""
WALK = """
MATCH p = (n:Entity)-[:RELATED*1..{hops}]-(m:Entity)
WHERE n.key IN $keys
WITH p, length(p) AS hops
ORDER BY hops
LIMIT $limit
RETURN [r IN relationships(p) | [startNode(r).name, r.type, endNode(r).name, r.chunk_id]] AS steps
"""
COUNT = "MATCH (n:Entity) RETURN count(n)"


def entity_key(name: str) -> str:
    """How entity names are matched: lowercase words joined by single spaces ("Postgres!" == "postgres")."""
    return " ".join(re.findall(r"\w+", name.lower()))


class GraphStore(Protocol):
    """A Cypher endpoint: run a statement with parameters, get rows back."""

    async def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]: ...
    async def ensure_indexes(self) -> None: ...
    async def aclose(self) -> None: ...


class FalkorDBStore:
    """A graph in FalkorDB (`redis://` URL); the local default, see `LocalFalkorDB`."""

    def __init__(self, url: str, graph: str = "agentstack") -> None:
        falkordb = require("falkordb.asyncio", extra="local", feature="the FalkorDB graph store")
        self._where = f"FalkorDB at {_host_of(url)}"
        self._errors = require("redis.exceptions", extra="local", feature="the FalkorDB graph store").RedisError
        self._db = falkordb.FalkorDB.from_url(url)
        self._graph = self._db.select_graph(graph)

    async def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        try:
            result = await self._graph.query(query, params or {})
        except self._errors as exc:
            raise _store_failed(
                self._where,
                exc,
                "check that it runs (a local one restarts on the next open_knowledge_graph) and AGENTSTACK_GRAPH_URL",
            ) from exc
        return [list(row) for row in result.result_set]

    async def ensure_indexes(self) -> None:
        existing = await self.run("CALL db.indexes() YIELD label, properties RETURN label, properties")
        have = {(label, prop) for label, props in existing for prop in props}
        for label, prop in (("Entity", "key"), ("Chunk", "id"), ("Chunk", "doc_id")):
            if (label, prop) not in have:
                await self.run(f"CREATE INDEX FOR (n:{label}) ON (n.{prop})")

    async def aclose(self) -> None:
        await self._db.aclose()


class Neo4jStore:
    """A graph in Neo4j through the official async driver (`neo4j://` or `bolt://` URL)."""

    def __init__(self, url: str, *, user: str = "neo4j", password: str = "", database: str | None = None) -> None:
        neo4j = require("neo4j", extra="neo4j", feature="the Neo4j graph store")
        self._where = f"Neo4j at {_host_of(url)}"
        self._errors = (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError)
        self._driver = neo4j.AsyncGraphDatabase.driver(url, auth=(user, password) if password else None)
        self._database = database

    async def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        try:
            async with self._driver.session(database=self._database) as session:
                result = await session.run(query, params or {})
                return [list(record.values()) async for record in result]
        except self._errors as exc:
            raise _store_failed(
                self._where, exc, "check that Neo4j runs, and the user, password and database in AGENTSTACK_GRAPH_URL"
            ) from exc

    async def ensure_indexes(self) -> None:
        for name, label, prop in (
            ("entity_key", "Entity", "key"),
            ("chunk_id", "Chunk", "id"),
            ("chunk_doc", "Chunk", "doc_id"),
        ):
            await self.run(f"CREATE INDEX {name} IF NOT EXISTS FOR (n:{label}) ON (n.{prop})")

    async def aclose(self) -> None:
        await self._driver.close()


def _host_of(url: str) -> str:
    """host:port of a store URL, never its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _store_failed(where: str, error: Exception, fix: str) -> RetrievalError:
    return RetrievalError(f"{where} failed: {type(error).__name__}: {error}", fix=fix)


def open_graph_store(url: str, *, graph: str = "agentstack") -> GraphStore:
    """`redis://` -> FalkorDB; `neo4j://`, `neo4j+s://`, `bolt://` -> Neo4j (user:password in the URL)."""
    if url.startswith(("redis://", "rediss://", "falkor://", "falkors://")):
        return FalkorDBStore(url.replace("falkor", "redis", 1), graph)
    if url.startswith(("neo4j://", "neo4j+s://", "bolt://", "bolt+s://")):
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        bare = urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), "", "", ""))
        return Neo4jStore(
            bare, user=parts.username or "neo4j", password=parts.password or "", database=parts.path.strip("/") or None
        )
    raise ConfigError(
        f"graph URL {url!r} has an unknown scheme",
        fix="use redis://[:password@]host:port for FalkorDB or neo4j://user:password@host:7687 for Neo4j",
    )


# -- extraction -------------------------------------------------------------------------------------


class ExtractedEntity(BaseModel):
    name: str = Field(min_length=1, max_length=80, description="The entity as written in the text.")
    type: str = Field(min_length=1, max_length=40, description="A short type: person, system, concept, ...")


class ExtractedRelation(BaseModel):
    source: str = Field(min_length=1, max_length=80, description="Name of the entity the relation starts from.")
    relation: str = Field(min_length=1, max_length=40, description="A short verb phrase, e.g. 'stores'.")
    target: str = Field(min_length=1, max_length=80, description="Name of the entity the relation points to.")


class Extraction(BaseModel):
    """Entities and relations stated in one chunk of text."""

    entities: list[ExtractedEntity] = Field(max_length=12)
    relations: list[ExtractedRelation] = Field(max_length=12)


class QueryEntities(BaseModel):
    """The entities a question is about."""

    names: list[Annotated[str, Field(min_length=1, max_length=80)]] = Field(max_length=6)


EXTRACT_INSTRUCTION = (
    "Extract the named entities (systems, tools, people, organisations, places, concepts) and the relations "
    "between them that the text states, as JSON. Use the names as written.\n\nText: {text}"
)
QUERY_INSTRUCTION = "List the named entities this question is about, as JSON.\n\nQuestion: {text}"
# One worked example each: small and base models follow a shown answer far better than a described one
# (Gemma 270M answers `{}` or whitespace without it, even under a grammar).
EXTRACT_EXAMPLE = (
    "Marie Curie discovered polonium in Paris.",
    Extraction(
        entities=[
            ExtractedEntity(name="Marie Curie", type="person"),
            ExtractedEntity(name="polonium", type="element"),
            ExtractedEntity(name="Paris", type="place"),
        ],
        relations=[
            ExtractedRelation(source="Marie Curie", relation="discovered", target="polonium"),
            ExtractedRelation(source="Marie Curie", relation="worked in", target="Paris"),
        ],
    ),
)
QUERY_EXAMPLE = ("Which element did Marie Curie discover in Paris?", QueryEntities(names=["Marie Curie", "Paris"]))


def _few_shot(instruction: str, example: tuple[str, BaseModel], text: str) -> list[BaseMessage]:
    return [
        HumanMessage(instruction.format(text=example[0])),
        AIMessage(example[1].model_dump_json()),
        HumanMessage(instruction.format(text=text)),
    ]


class GraphExtractor:
    """Structured-output extraction with any LangChain chat model (grammar-constrained on the local fleet).

    Asks through `StructuredCall`, like every structured step: a reply that does not parse is asked for once
    more, then is a `ModelOutputError` naming the schema; `tokens_used` adds up what extraction cost.
    """

    def __init__(self, model: BaseChatModel) -> None:
        self._extract = StructuredCall(model, Extraction)
        self._query = StructuredCall(model, QueryEntities)
        self.tokens_used = 0

    async def aextract(self, text: str) -> Extraction:
        extraction, tokens = await self._extract.ask(
            _few_shot(EXTRACT_INSTRUCTION, EXTRACT_EXAMPLE, text), ref="graph extraction"
        )
        self.tokens_used += tokens
        return extraction

    async def aquery_entities(self, query: str) -> list[str]:
        found, tokens = await self._query.ask(
            _few_shot(QUERY_INSTRUCTION, QUERY_EXAMPLE, query), ref="query entity linking"
        )
        self.tokens_used += tokens
        return list(found.names)


# -- the graph --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphStep:
    source: str
    relation: str
    target: str
    chunk_id: str


@dataclass
class GraphPath:
    """A walk from a query entity; each step names the chunk it was read from."""

    steps: list[GraphStep]

    def __str__(self) -> str:
        return "; ".join(f"({s.source}) -[{s.relation}]-> ({s.target})" for s in self.steps)


@dataclass
class GraphResult:
    """Linked entities, the paths found from them, and the chunks those paths came from."""

    query: str
    entities: list[str]
    paths: list[GraphPath]
    chunks: dict[str, Chunk] = field(default_factory=dict)  # filled when the retriever has a chunk index

    @property
    def chunk_ids(self) -> list[str]:
        return list(dict.fromkeys(s.chunk_id for p in self.paths for s in p.steps))

    def as_context(self) -> str:
        """The paths as lines an LLM can read and cite (`[chunk_id]` after each fact)."""
        facts = dict.fromkeys(f"{s.source} {s.relation} {s.target} [{s.chunk_id}]" for p in self.paths for s in p.steps)
        return "\n".join(facts)


class KnowledgeGraph:
    """Writes and walks the graph through a `GraphStore` with the shared Cypher."""

    def __init__(self, store: GraphStore) -> None:
        self.store = store

    async def setup(self) -> None:
        await self.store.ensure_indexes()

    async def replace_document(self, doc_id: str, extracted: Sequence[tuple[Chunk, Extraction]]) -> None:
        """Drop what the document contributed before, then write this version's entities and relations."""
        await self.delete_document(doc_id)
        for chunk, extraction in extracted:
            entities = {
                entity_key(e.name): {"key": entity_key(e.name), "name": e.name, "type": e.type}
                for e in extraction.entities
            }
            relations = []
            for r in extraction.relations:
                source, target = entity_key(r.source), entity_key(r.target)
                if not source or not target or source == target:
                    continue
                for key, name in ((source, r.source), (target, r.target)):
                    entities.setdefault(key, {"key": key, "name": name, "type": "unknown"})
                relations.append({"source": source, "target": target, "type": r.relation.strip().lower()})
            entities.pop("", None)
            params = {"chunk_id": chunk.id, "doc_id": doc_id, "source": chunk.source}
            await self.store.run(UPSERT_CHUNK, {**params, "entities": list(entities.values())})
            if relations:
                await self.store.run(UPSERT_RELATIONS, {**params, "relations": relations})

    async def delete_document(self, doc_id: str) -> None:
        await self.store.run(DELETE_DOCUMENT_RELATIONS, {"doc_id": doc_id})
        await self.store.run(DELETE_DOCUMENT_CHUNKS, {"doc_id": doc_id})
        await self.store.run(DELETE_ORPHAN_ENTITIES)

    async def link(self, text: str, names: Sequence[str] = ()) -> list[str]:
        """Entities named in `text` (whole words) or in `names` (e.g. from an LLM), as keys."""
        rows = await self.store.run(
            LINK_ENTITIES, {"keys": [entity_key(n) for n in names], "text": f" {entity_key(text)} "}
        )
        return [row[0] for row in rows]

    async def walk(self, keys: Sequence[str], hops: int = 2, limit: int = 50) -> list[GraphPath]:
        if not 1 <= hops <= 4:
            raise RetrievalError(f"hops={hops}: walks go 1 to 4 hops", fix="pass hops between 1 and 4")
        if not keys:
            return []
        rows = await self.store.run(WALK.replace("{hops}", str(int(hops))), {"keys": list(keys), "limit": limit})
        paths, seen = [], set()
        for (steps,) in rows:
            path = GraphPath([GraphStep(*(str(x) for x in step)) for step in steps])
            signature = tuple(sorted((s.source, s.relation, s.target) for s in path.steps))
            if signature not in seen:
                seen.add(signature)
                paths.append(path)
        return paths

    async def count_entities(self) -> int:
        return int((await self.store.run(COUNT))[0][0])


class GraphIngestor:
    """Extracts each leaf chunk of a document (a few at once) and replaces the document in the graph."""

    def __init__(self, graph: KnowledgeGraph, extractor: GraphExtractor, *, concurrency: int = 4) -> None:
        self.graph = graph
        self.extractor = extractor
        self._limit = asyncio.Semaphore(concurrency)

    async def aingest(self, chunks: Sequence[Chunk]) -> int:
        """Returns the number of relations written. Extraction finishes before any write."""

        async def extract(chunk: Chunk) -> tuple[Chunk, Extraction]:
            async with self._limit:
                return chunk, await self.extractor.aextract(chunk.text)

        leaves = [c for c in chunks if c.kind == "leaf"]
        extracted = await asyncio.gather(*(extract(c) for c in leaves))
        by_document: dict[str, list[tuple[Chunk, Extraction]]] = {}
        for chunk, extraction in extracted:
            by_document.setdefault(chunk.doc_id, []).append((chunk, extraction))
        for doc_id, items in by_document.items():
            await self.graph.replace_document(doc_id, items)
        return sum(len(e.relations) for _, e in extracted)


@dataclass
class GraphRetriever:
    """Links the query's entities (word match, plus the extractor's reading when given) and walks k hops."""

    graph: KnowledgeGraph
    extractor: GraphExtractor | None = None
    index: Any = None  # a MilvusIndex: fills `GraphResult.chunks` with the source chunks of the paths

    async def aretrieve(self, query: str, hops: int = 2, limit: int = 50) -> GraphResult:
        names = await self.extractor.aquery_entities(query) if self.extractor is not None else []
        keys = await self.graph.link(query, names)
        paths = await self.graph.walk(keys, hops=hops, limit=limit)
        result = GraphResult(query=query, entities=keys, paths=paths)
        if self.index is not None and paths:
            result.chunks = await self.index.get(result.chunk_ids)
        return result
