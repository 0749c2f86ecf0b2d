"""Retrieval quality and speed on BEIR SciFact with the default offline stack.

Indexes the 5,183 abstracts (parent/child chunks of all-MiniLM-L6-v2 tokens) into Milvus Lite and
scores the 300 test claims: nDCG@10 and Recall@100 at document level (a document ranks where its first
chunk does) for BM25 only, dense only, hybrid (RRF of both) and hybrid with parent expansion (leaves
merged into their parent passages, which take their best leaf's score). Also ingest throughput and the
latency of a k=10 hybrid query. Ends with one JSON line.

    python bench/retrieval_scifact.py [--quick | --smoke] [--data DIR] [--index DIR]

`--index DIR` keeps the index between runs: re-ingesting unchanged documents is a no-op, so a second
run measures only retrieval (its ingest figure then counts fingerprint checks, not embedding).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from agentstack.rag import Document, HybridRetriever, Ingestor, LocalEmbedder, MilvusIndex

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
MODES = {
    "bm25": {"legs": ("bm25",)},
    "dense": {"legs": ("dense",)},
    "hybrid": {},
    "hybrid_parents": {"expand_parents": True},
}


def load(data: Path, size: str) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    queries = {}
    for line in (data / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["_id"] in qrels:
            queries[row["_id"]] = row["text"]
    docs = []
    for line in (data / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        metadata = {"title": row["title"]} if row["title"] else {}
        docs.append(Document(source=row["_id"], text=f"{row['title']}\n{row['text']}".strip(), metadata=metadata))
    if size != "full":  # the judged documents of some queries plus others: same shape, less work
        count, others = (50, 1000) if size == "quick" else (3, 20)
        queries = dict(list(queries.items())[:count])
        judged = {d for q in queries for d in qrels[q]}
        docs = [d for d in docs if d.source in judged] + [d for d in docs if d.source not in judged][:others]
    return docs, queries, qrels


def ndcg_at_10(ranked: list[str], relevant: dict[str, int]) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sum(score / math.log2(i + 2) for i, score in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def documents(result) -> list[str]:  # type: ignore[no-untyped-def]
    return list(dict.fromkeys(s.chunk.source for s in result.chunks))


async def main(data: Path, size: str, index_dir: Path | None) -> dict[str, float]:
    docs, queries, qrels = load(data, size)
    embedder = LocalEmbedder()
    throwaway = None if index_dir else tempfile.TemporaryDirectory(prefix="agentstack-scifact-")
    home = index_dir or Path(throwaway.name)  # type: ignore[union-attr]
    index = await MilvusIndex.open(home / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
    try:
        report = await Ingestor(index, embedder).aingest(docs, progress=size != "smoke")
        print(
            f"ingested {len(report.added) + len(report.replaced)} documents ({len(report.unchanged)} unchanged), "
            f"{report.chunks} chunks in {report.seconds:.1f} s: {report.chunks_per_s:.1f} chunks/s"
        )
        # Deep candidate lists, so Recall@100 counts 100 distinct documents.
        deep = HybridRetriever(index, embedder, candidates=300)
        scores: dict[str, dict[str, float]] = {}
        for mode, options in MODES.items():
            ndcg, recall = [], []
            for qid, text in queries.items():
                result = await deep.aretrieve(text, k=300, **options)  # type: ignore[arg-type]
                ranked = documents(result)
                relevant = qrels[qid]
                ndcg.append(ndcg_at_10(ranked, relevant))
                recall.append(len(set(ranked[:100]) & set(relevant)) / len(relevant))
            scores[mode] = {"ndcg10": statistics.mean(ndcg), "recall100": statistics.mean(recall)}
            print(f"{mode:15s} nDCG@10 {scores[mode]['ndcg10']:.4f}  Recall@100 {scores[mode]['recall100']:.4f}")
        retriever = HybridRetriever(index, embedder)
        latencies = []
        for text in list(queries.values()) * (2 if size == "quick" else 1):
            started = time.perf_counter()
            await retriever.aretrieve(text, k=10)
            latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
        print(f"hybrid k=10 query latency: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(latencies)} queries")
    finally:
        await index.aclose()
        if throwaway:
            throwaway.cleanup()
    return {
        "ndcg10_bm25": round(scores["bm25"]["ndcg10"], 4),
        "ndcg10_dense": round(scores["dense"]["ndcg10"], 4),
        "ndcg10_hybrid": round(scores["hybrid"]["ndcg10"], 4),
        "ndcg10_hybrid_parents": round(scores["hybrid_parents"]["ndcg10"], 4),
        "recall100_hybrid": round(scores["hybrid"]["recall100"], 4),
        "ingest_chunks_per_s": round(report.chunks_per_s, 1),
        "query_p50_ms": round(p50, 1),
        "query_p95_ms": round(p95, 1),
        "queries": len(queries),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="50 queries over their judged documents + 1,000 others")
    size.add_argument("--smoke", action="store_true", help="3 queries, a few dozen documents: proves it runs")
    parser.add_argument("--data", type=Path, default=DATA, help="a BEIR-format SciFact directory")
    parser.add_argument("--index", type=Path, default=None, help="keep the index here (re-runs skip ingest)")
    args = parser.parse_args()
    chosen = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(json.dumps(asyncio.run(main(args.data, chosen, args.index))))
