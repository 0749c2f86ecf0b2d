"""Hybrid retrieval on a real Milvus Lite index with the real local embedder."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentstack._net import free_port
from agentstack.errors import ConfigError, RetrievalError
from agentstack.rag import (
    CohereReranker,
    HttpReranker,
    HybridRetriever,
    Ingestor,
    LocalEmbedder,
    MilvusIndex,
    OpenAIEmbedder,
    SemanticChunker,
)
from agentstack.rag._loaders import load_document
from rag_server import serve

pytestmark = pytest.mark.slow  # real Milvus Lite: each test's index takes seconds to create

DOCS = {
    "postgres.md": "# Checkpoints\n\nLangGraph checkpoints are saved to Postgres after every superstep. "
    "A crashed run resumes from its last checkpoint, so no completed step runs twice.\n\n"
    "Old checkpoints are pruned by the retention policy, which keeps the latest ones per thread.",
    "milvus.txt": "Milvus stores dense vectors and sparse BM25 vectors in one collection. "
    "Hybrid search fuses both result lists with reciprocal rank fusion before reranking.",
    "gpu.html": "<html><head><title>Fleet</title><style>p {color: red}</style></head><body>"
    "<p>The fleet places vLLM replicas on GPUs by free memory and restarts crashed servers.</p>"
    "<script>var treatments = 1;</script></body></html>",
}


@pytest.fixture
async def index(tmp_path: Path, embedder: LocalEmbedder) -> AsyncIterator[MilvusIndex]:
    opened = await MilvusIndex.open(tmp_path / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
    yield opened
    await opened.aclose()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    (folder / ".hidden.md").write_text("never indexed")
    return folder


async def test_ingest_then_retrieve_with_provenance(index, embedder, corpus):
    report = await Ingestor(index, embedder).aingest_paths([corpus])
    assert sorted(Path(s).name for s in report.added) == sorted(DOCS)
    assert report.chunks == await index.count("leaf") >= 3
    result = await HybridRetriever(index, embedder).aretrieve("how does a crashed run resume?", k=3)
    top = result.chunks[0]
    assert Path(top.chunk.source).name == "postgres.md"
    assert set(top.legs) == {"dense", "bm25"} and top.dense_score is not None and top.bm25_score is not None
    assert top.fused_score == pytest.approx(sum(1 / (60 + r) for r in top.legs.values()))
    assert result.reranked is False and result.reranker is None
    assert [c.fused_score for c in result] == sorted((c.fused_score for c in result), reverse=True)


async def test_bm25_matches_across_word_forms(index, embedder, corpus):
    """Milvus Lite's analyzer does not stem; the stemmed copy makes "restarting" find "restarts"."""
    await Ingestor(index, embedder).aingest_paths([corpus])
    result = await HybridRetriever(index, embedder).aretrieve("restarting crashing servers", k=3, legs=("bm25",))
    assert Path(result.chunks[0].chunk.source).name == "gpu.html"
    assert all(set(c.legs) == {"bm25"} for c in result)
    # Script and style text is not indexed.
    assert len(await HybridRetriever(index, embedder).aretrieve("treatments", k=3, legs=("bm25",))) == 0


async def test_reingest_is_a_noop_and_a_change_replaces_chunks(index, embedder, corpus):
    ingestor = Ingestor(index, embedder)
    await ingestor.aingest_paths([corpus])
    leaves = await index.count("leaf")
    again = await ingestor.aingest_paths([corpus])
    assert len(again.unchanged) == 3 and again.added == again.replaced == [] and again.chunks == 0
    (corpus / "milvus.txt").write_text("Milvus Lite keeps the collection in a local directory named milvus.db.")
    changed = await ingestor.aingest_paths([corpus])
    assert [Path(s).name for s in changed.replaced] == ["milvus.txt"] and len(changed.unchanged) == 2
    assert await index.count("leaf") == leaves  # one leaf out, one in
    retriever = HybridRetriever(index, embedder)
    texts = [c.text for c in await retriever.aretrieve("reciprocal rank fusion", k=10)]
    assert not any("reciprocal" in t for t in texts)
    await ingestor.adelete(corpus / "milvus.txt")
    remaining = {Path(c.chunk.source).name for c in await retriever.aretrieve("Milvus collection", k=10)}
    assert "milvus.txt" not in remaining and remaining


async def test_metadata_filters(index, embedder, corpus):
    await Ingestor(index, embedder).aingest_paths([corpus])
    retriever = HybridRetriever(index, embedder)
    only_html = await retriever.aretrieve("checkpoints and vectors", k=5, filters={"file_type": "html"})
    assert {Path(c.chunk.source).name for c in only_html} == {"gpu.html"}
    either = await retriever.aretrieve("checkpoints", k=5, filters={"file_type": ["md", "txt"]})
    assert {Path(c.chunk.source).name for c in either} <= {"postgres.md", "milvus.txt"}
    titled = await retriever.aretrieve("fleet", k=5, filters={"title": "Fleet"})
    assert {c.chunk.metadata["title"] for c in titled} == {"Fleet"}
    with pytest.raises(RetrievalError, match="not a plain name"):
        await retriever.aretrieve("x", filters={'a"] or 1': "b"})


async def test_parent_expansion_merges_leaves_into_passages(index, embedder, tmp_path):
    text = " ".join(f"Sentence {i} says the retention policy prunes checkpoints of thread {i}." for i in range(60))
    (tmp_path / "long.txt").write_text(text)
    await Ingestor(index, embedder).aingest_paths([tmp_path / "long.txt"])
    retriever = HybridRetriever(index, embedder)
    leaves = await retriever.aretrieve("retention policy prunes checkpoints", k=20)
    passages = await retriever.aretrieve("retention policy prunes checkpoints", k=20, expand_parents=True)
    assert all(c.chunk.kind == "leaf" for c in leaves) and all(c.chunk.kind == "parent" for c in passages)
    assert len(passages) < len(leaves)
    for passage in passages:
        assert passage.children and all(leaf.parent_id == passage.chunk.id for leaf in passage.children)
        assert all(leaf.text.split()[1] in passage.text for leaf in passage.children)
        assert passage.fused_score > 0
    assert len(passages[0].chunk.text) > len(leaves[0].chunk.text)


async def test_semantic_chunks_fit_the_embedder(index, embedder, tmp_path):
    topics = ["Postgres stores checkpoints durably. " * 40, "GPUs run vLLM replicas with tensor parallelism. " * 40]
    (tmp_path / "two-topics.txt").write_text(" ".join(topics))
    chunker = SemanticChunker(embedder)
    report = await Ingestor(index, embedder, chunker).aingest_paths([tmp_path / "two-topics.txt"])
    assert report.chunks >= 2
    chunks = (await HybridRetriever(index, embedder).aretrieve("checkpoints", k=50)).chunks
    assert all(len(embedder.tokenize(c.text)) <= embedder.max_tokens for c in chunks)


def _pdf(text: str) -> bytes:
    """A minimal one-page PDF showing `text` in Helvetica."""
    stream = zlib.compress(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


async def test_pdf_is_loaded_and_searchable(index, embedder, tmp_path):
    (tmp_path / "paper.pdf").write_bytes(_pdf("Reciprocal rank fusion combines dense and sparse rankings."))
    assert "Reciprocal rank fusion" in load_document(tmp_path / "paper.pdf").text
    await Ingestor(index, embedder).aingest_paths([tmp_path / "paper.pdf"])
    result = await HybridRetriever(index, embedder).aretrieve("rank fusion", k=1)
    assert result.chunks[0].chunk.metadata["file_type"] == "pdf"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.md", b"", "is empty"),
        ("blank.txt", b"  \n\n ", "no text to index"),
        ("table.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", "not a readable PDF"),
        ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
    ],
)
async def test_bad_input_is_refused_and_the_index_is_untouched(index, embedder, corpus, name, content, message):
    ingestor = Ingestor(index, embedder)
    await ingestor.aingest_paths([corpus])
    leaves = await index.count("leaf")
    (corpus / "milvus.txt").write_text("A changed document that must not be written, since the ingest fails.")
    bad = corpus.parent / name
    bad.write_bytes(content)
    with pytest.raises(RetrievalError, match=message):
        await ingestor.aingest_paths([corpus, bad])
    assert await index.count("leaf") == leaves
    texts = [c.text for c in await HybridRetriever(index, embedder).aretrieve("reciprocal rank fusion", k=10)]
    assert any("reciprocal rank fusion" in t for t in texts)


async def test_query_longer_than_the_model_window_is_refused(index, embedder):
    retriever = HybridRetriever(index, embedder)
    with pytest.raises(RetrievalError, match=r"the query is \d+ tokens long; .* reads at most 254"):
        await retriever.aretrieve("checkpoint " * 300)
    with pytest.raises(RetrievalError, match="empty"):
        await retriever.aretrieve("   ")


async def test_collection_of_another_dimension_or_embedder_is_refused(index, embedder, tmp_path):
    path = tmp_path / "milvus.db"
    with pytest.raises(ConfigError, match=r"holds 384-dimensional vectors .* makes 768-dimensional"):
        await MilvusIndex.open(path, dimension=768, embedder="bge-base")
    with pytest.raises(ConfigError, match=r"built with the embedder all-MiniLM-L6-v2, not other-384"):
        await MilvusIndex.open(path, dimension=384, embedder="other-384")


async def test_rerankers_speak_cohere_and_v1_rerank(index, embedder, corpus):
    await Ingestor(index, embedder).aingest_paths([corpus])
    port = free_port()
    with serve(embedder, port) as seen:
        for reranker in (
            CohereReranker("test-key", model="rerank-v3.5", base_url=f"http://127.0.0.1:{port}"),
            HttpReranker(f"http://127.0.0.1:{port}", model="bge-reranker"),
        ):
            result = await HybridRetriever(index, embedder, reranker).aretrieve("GPU placement of replicas", k=2)
            assert result.reranked and result.reranker == reranker.name
            assert Path(result.chunks[0].chunk.source).name == "gpu.html"
            scores = [c.rerank_score for c in result]
            assert len(scores) == 2 and scores == sorted(scores, reverse=True)  # type: ignore[type-var]
            assert all(c.score == c.rerank_score for c in result)
        assert [s["path"] for s in seen] == ["/v2/rerank", "/v1/rerank"]
        assert seen[0]["auth"] == "Bearer test-key" and seen[0]["body"]["model"] == "rerank-v3.5"
        with pytest.raises(RetrievalError, match=r"(?s)answered 404.*serves the rerank model 'missing'"):
            await HttpReranker(f"http://127.0.0.1:{port}", model="missing").arerank("q", ["d"], 1)
        with pytest.raises(RetrievalError, match=r"Cohere rerank failed \(404\)"):
            await CohereReranker("k", model="missing", base_url=f"http://127.0.0.1:{port}").arerank("q", ["d"], 1)


async def test_openai_compatible_embedder(tmp_path, embedder, corpus):
    port = free_port()
    with serve(embedder, port) as seen:
        remote = await OpenAIEmbedder.connect(f"http://127.0.0.1:{port}/v1", "minilm", api_key="sk-local")
        assert remote.dimension == 384 and seen[0]["auth"] == "Bearer sk-local"
        index = await MilvusIndex.open(tmp_path / "remote.db", dimension=remote.dimension, embedder=remote.name)
        try:
            await Ingestor(index, remote).aingest_paths([corpus])
            result = await HybridRetriever(index, remote).aretrieve("vector collection with BM25", k=1)
            assert Path(result.chunks[0].chunk.source).name == "milvus.txt"
            # The server scales its vectors by 3; the client normalises them back to the local model's.
            local, remote_vector = await embedder.aembed_query("BM25"), await remote.aembed_query("BM25")
            assert remote_vector == pytest.approx(local, abs=1e-5)
        finally:
            await index.aclose()
            await remote.aclose()
    with pytest.raises(RetrievalError, match="cannot be reached"):
        await OpenAIEmbedder.connect(f"http://127.0.0.1:{port}/v1", "minilm")


async def test_every_leaf_is_indexed_under_its_document_title(index, embedder, tmp_path):
    """A leaf cut from the middle of a document is found by its document's subject (its title)."""
    body = " ".join(f"<p>Step {i}: the operator checks valve {i} and records the pressure.</p>" for i in range(40))
    (tmp_path / "manual.html").write_text(f"<html><head><title>Zeppelin maintenance</title></head><body>{body}</body>")
    report = await Ingestor(index, embedder).aingest_paths([tmp_path / "manual.html"])
    assert report.chunks >= 3
    result = await HybridRetriever(index, embedder).aretrieve("zeppelin", k=50, legs=("bm25",))
    assert len(result) == report.chunks  # every leaf, though only the title says "Zeppelin"
    assert sum("Zeppelin" in c.text for c in result) == 1  # the stored text stays the leaf's own


async def test_a_document_without_text_is_refused_before_any_write(index, embedder):
    from agentstack.rag import Document

    good = Document(source="memo-1", text="The release ships on Friday.", metadata={"team": "infra"})
    with pytest.raises(RetrievalError, match="document 'memo-2' has no text"):
        await Ingestor(index, embedder).aingest([good, Document(source="memo-2", text=" \n")])
    assert await index.count("leaf") == 0


async def test_changing_the_chunker_re_ingests(index, embedder, corpus):
    ingestor = Ingestor(index, embedder)
    await ingestor.aingest_paths([corpus])
    ingestor.chunker = SemanticChunker(embedder)
    again = await ingestor.aingest_paths([corpus])
    assert len(again.replaced) == 3 and again.unchanged == []


async def test_a_milvus_lite_server_that_exited_is_started_again_by_the_next_open(tmp_path, embedder, caplog):
    """Milvus Lite gives every client of a file this process's server's address, dead or alive: without the
    restart, every open after its server exited failed until the process did."""
    from milvus_lite.server_manager import server_manager_instance

    path = tmp_path / "milvus.db"
    first = await MilvusIndex.open(path, dimension=embedder.dimension, embedder=embedder.name)
    await first.aclose()
    server = server_manager_instance._servers[str(path.resolve())]
    server._p.kill()
    server._p.wait()
    second = await MilvusIndex.open(path, dimension=embedder.dimension, embedder=embedder.name)
    try:
        assert await second.count() == 0
    finally:
        await second.aclose()
    assert "Milvus Lite's server for" in caplog.text and "starting it again" in caplog.text


def milvus_bin(folder: Path, script: str) -> Path:
    """A `milvus` for milvus-lite's `BIN_PATH` that runs `script` first, then (if it gets there) the real one."""
    import milvus_lite

    real = Path(milvus_lite.__file__).parent / "lib"
    folder.mkdir()
    (folder / "milvus").write_text(f'#!/bin/sh\n{script}\nLD_LIBRARY_PATH="{real}" exec "{real}/milvus" "$@"\n')
    (folder / "milvus").chmod(0o755)
    return folder


async def test_a_milvus_lite_server_that_keeps_exiting_is_a_clear_error(tmp_path, embedder, monkeypatch):
    monkeypatch.setenv("BIN_PATH", str(milvus_bin(tmp_path / "bin", "sleep 1; exit 3")))
    with pytest.raises(RetrievalError, match=r"Milvus Lite's server for .*broken.db exited twice \(status 3\)"):
        await MilvusIndex.open(tmp_path / "broken.db", dimension=embedder.dimension, embedder=embedder.name)


async def test_a_milvus_lite_server_slow_to_start_is_waited_for(tmp_path, embedder, monkeypatch):
    """milvus-lite waits half a second for its server, and pymilvus fails at once when the socket is not there
    yet: cold after a test suite, with the fleet and the embedder starting beside it, the first `agentstack run`
    failed so. Here the server starts 3 s late."""
    monkeypatch.setenv("BIN_PATH", str(milvus_bin(tmp_path / "bin", "sleep 3")))  # where milvus-lite looks
    index = await MilvusIndex.open(tmp_path / "late.db", dimension=embedder.dimension, embedder=embedder.name)
    try:
        assert await index.count() == 0
    finally:
        await index.aclose()
