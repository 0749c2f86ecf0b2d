"""Graph RAG conformance: the same Cypher on FalkorDB (always, a real local server) and Neo4j (when
AGENTSTACK_TEST_NEO4J_URL is set, e.g. neo4j://neo4j:password@localhost:7687)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentstack.errors import ConfigError, RetrievalError
from agentstack.rag import (
    Chunk,
    Extraction,
    GraphExtractor,
    GraphIngestor,
    GraphRetriever,
    KnowledgeGraph,
    open_graph_store,
)
from agentstack.rag._falkordb_server import LocalFalkorDB
from agentstack.rag._graph import QueryEntities, entity_key

NEO4J_URL = os.environ.get("AGENTSTACK_TEST_NEO4J_URL")
STORES = [
    pytest.param("falkordb", marks=pytest.mark.slow),
    pytest.param("neo4j", marks=pytest.mark.skipif(not NEO4J_URL, reason="no Neo4j configured")),
]


@pytest.fixture(scope="module")
def falkordb_url(tmp_path_factory: pytest.TempPathFactory):
    server = LocalFalkorDB(tmp_path_factory.mktemp("falkordb-home"))
    url = server.start()
    yield url
    assert server.stop()


@pytest.fixture(params=STORES)
async def graph(request, falkordb_url) -> AsyncIterator[KnowledgeGraph]:
    name = f"test_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    store = open_graph_store(falkordb_url if request.param == "falkordb" else NEO4J_URL, graph=name)  # type: ignore[arg-type]
    kg = KnowledgeGraph(store)
    await kg.setup()
    await store.run("MATCH (n) DETACH DELETE n")
    yield kg
    await store.run("MATCH (n) DETACH DELETE n")
    await store.aclose()


def chunk(id_: str, doc: str, text: str = "") -> Chunk:
    return Chunk(id=id_, doc_id=doc, source=f"{doc}.md", text=text or id_, kind="leaf", position=0)


def extraction(*relations: tuple[str, str, str], entities: tuple[tuple[str, str], ...] = ()) -> Extraction:
    return Extraction.model_validate(
        {
            "entities": [{"name": n, "type": t} for n, t in entities],
            "relations": [{"source": s, "relation": r, "target": t} for s, r, t in relations],
        }
    )


async def test_walks_k_hops_with_provenance(graph):
    await graph.replace_document(
        "doc-a",
        [
            (
                chunk("c1", "doc-a"),
                extraction(("LangGraph", "checkpoints to", "Postgres"), entities=(("LangGraph", "framework"),)),
            ),
            (chunk("c2", "doc-a"), extraction(("Postgres", "runs on", "Debian"))),
        ],
    )
    await graph.replace_document("doc-b", [(chunk("c3", "doc-b"), extraction(("Debian", "ships", "PostgreSQL 15")))])
    assert await graph.count_entities() == 4
    keys = await graph.link("Where does langgraph keep its state?")
    assert keys == ["langgraph"]
    one = await graph.walk(keys, hops=1)
    assert [str(p) for p in one] == ["(LangGraph) -[checkpoints to]-> (Postgres)"]
    assert one[0].steps[0].chunk_id == "c1"
    three = await graph.walk(keys, hops=3)
    assert {len(p.steps) for p in three} == {1, 2, 3}
    longest = max(three, key=lambda p: len(p.steps))
    assert [s.chunk_id for s in longest.steps] == ["c1", "c2", "c3"]
    assert [len(p.steps) for p in three] == sorted(len(p.steps) for p in three)  # shortest first


async def test_linking_matches_whole_words_and_given_names(graph):
    await graph.replace_document("d", [(chunk("c1", "d"), extraction(("GPU", "hosts", "vLLM")))])
    assert await graph.link("which GPUs?") == []  # "gpu" is not a word of the question
    assert await graph.link("which GPU hosts it?") == ["gpu"]
    assert sorted(await graph.link("something else", names=["vLLM!"])) == ["vllm"]
    assert entity_key("  Milvus   Lite! ") == "milvus lite"


async def test_replacing_and_deleting_a_document(graph):
    await graph.replace_document("d", [(chunk("c1", "d"), extraction(("Milvus", "stores", "vectors")))])
    await graph.replace_document("e", [(chunk("c9", "e"), extraction(("Milvus", "uses", "BM25")))])
    await graph.replace_document("d", [(chunk("c2", "d"), extraction(("Milvus", "indexes", "text")))])
    paths = {str(p) for p in await graph.walk(["milvus"], hops=1)}
    assert paths == {"(Milvus) -[indexes]-> (text)", "(Milvus) -[uses]-> (BM25)"}
    await graph.delete_document("d")
    assert {str(p) for p in await graph.walk(["milvus"], hops=1)} == {"(Milvus) -[uses]-> (BM25)"}
    assert await graph.count_entities() == 2  # "vectors" and "text" went with their document
    with pytest.raises(RetrievalError, match="hops=7"):
        await graph.walk(["milvus"], hops=7)


async def test_ingest_and_retrieve_with_a_model(graph, scripted_model):
    def reply(messages, tools):
        text = messages[-1].content
        assert len(messages) == 3  # the worked example, then the text
        if "Question:" in text:
            return QueryEntities(names=["the fleet"])
        if "restarts" in text:
            return extraction(("The fleet", "restarts", "replicas"), ("replicas", "serve", "Gemma"))
        return extraction(entities=(("Nothing", "concept"),))

    extractor = GraphExtractor(scripted_model(reply))
    written = await GraphIngestor(graph, extractor).aingest(
        [chunk("c1", "d", "The fleet restarts replicas; replicas serve Gemma."), chunk("c2", "d", "Unrelated.")]
    )
    assert written == 2
    result = await GraphRetriever(graph, extractor).aretrieve("What does it do?", hops=2)
    assert result.entities == ["the fleet"]
    assert "The fleet restarts replicas [c1]" in result.as_context()
    assert "replicas serve Gemma [c1]" in result.as_context()
    assert result.chunk_ids == ["c1"]


def test_unknown_graph_url_is_refused():
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_graph_store("http://localhost:7474")


@pytest.mark.slow
def test_local_falkordb_is_reused_and_stopped(tmp_path: Path):
    server = LocalFalkorDB(tmp_path)
    url = server.start()
    try:
        assert LocalFalkorDB(tmp_path).start() == url  # a second user finds the running server
        assert url.startswith("redis://:") and "@127.0.0.1:" in url
    finally:
        assert server.stop()
    assert server.url() is None and not server.stop()


async def test_ingestor_feeds_the_graph_and_paths_cite_indexed_chunks(graph, scripted_model, embedder, tmp_path):
    from agentstack.rag import HybridRetriever, Ingestor, MilvusIndex

    def reply(messages, tools):
        return extraction(("Milvus Lite", "stores", "the hybrid index"))

    (tmp_path / "notes.md").write_text("Milvus Lite stores the hybrid index in a local directory.")
    index = await MilvusIndex.open(tmp_path / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
    try:
        extractor = GraphExtractor(scripted_model(reply))
        ingestor = Ingestor(index, embedder, graph=GraphIngestor(graph, extractor))
        await ingestor.aingest_paths([tmp_path / "notes.md"])
        result = await GraphRetriever(graph, index=index).aretrieve("what does milvus lite store?", hops=1)
        assert [str(p) for p in result.paths] == ["(Milvus Lite) -[stores]-> (the hybrid index)"]
        (leaf,) = result.chunks.values()
        assert "local directory" in leaf.text and leaf.kind == "leaf"
        hit = (await HybridRetriever(index, embedder).aretrieve("hybrid index", k=1)).chunks[0]
        assert hit.chunk.id == leaf.id  # the graph's provenance is the index's chunk
        await ingestor.adelete(tmp_path / "notes.md")
        assert await graph.count_entities() == 0
    finally:
        await index.aclose()


@pytest.mark.slow
@pytest.mark.allow_model_requests
async def test_the_local_model_extracts_a_grounded_graph(graph, fleet_home):
    """The real CPU model (Gemma 270M on llama.cpp): grammar-constrained output always parses, and with the
    worked example it names entities that are in the text."""
    from agentstack.serving import Fleet
    from fleet_helpers import MODEL, tiny_spec

    text = "Alice Smith founded Acme Corporation in Berlin. Acme Corporation builds rockets."
    async with Fleet(tiny_spec(replicas=1), home=fleet_home) as fleet:
        extractor = GraphExtractor(fleet.chat_model(MODEL, temperature=0, max_tokens=400))
        await GraphIngestor(graph, extractor).aingest([chunk("c1", "d", text)])
        assert await graph.count_entities() >= 1
        assert await graph.link(text)  # at least one extracted entity is named, as a whole word, in the text
        names = await extractor.aquery_entities("Who founded Acme Corporation?")
        assert names and all(isinstance(n, str) and n for n in names)
