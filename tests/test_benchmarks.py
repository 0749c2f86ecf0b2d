"""Every benchmark still runs: each in its `--smoke` mode, ending with its one JSON line and its keys.

Only completion and the shape of the result are asserted, never a figure: a smoke run is too small to
measure anything, and this machine is shared. A benchmark nothing runs rots silently (checkpoint_throughput
failed on an import for weeks before this test existed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# benchmark -> the keys its JSON line must have
EXPECTED_KEYS = {
    "checkpoint_throughput": {"steps_per_s", "pool_vs_stock", "pool_vs_none"},
    "graph_overhead": {"agentstack_p50_ms", "handwritten_p50_ms", "overhead_ratio", "runs"},
    "retrieval_scifact": {
        "ndcg10_bm25",
        "ndcg10_dense",
        "ndcg10_hybrid",
        "ndcg10_hybrid_parents",
        "recall100_hybrid",
        "ingest_chunks_per_s",
        "query_p50_ms",
        "query_p95_ms",
        "queries",
    },
    "fleet_throughput": {"fleet_over_direct", "direct_tok_s", "fleet_tok_s"},
    "router_overhead": {"p50_added_ms", "p99_added_ms", "requests"},
    "affinity": {"ttft_rr_over_affinity", "throughput_affinity_over_rr", "prefill_rr_over_affinity"},
    "research_latency": {"written_over_extractive", "extractive_p50_s", "written_p50_s", "stack_open_s", "ingest_s"},
}


def test_every_benchmark_is_covered() -> None:
    assert {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")} == set(EXPECTED_KEYS)


def tiny_beir(root: Path) -> Path:
    """A BEIR-format collection small enough for a smoke run: 3 judged queries over 24 documents."""
    topics = ["checkpoint", "retrieval", "fleet", "sandbox", "prompt", "router"]
    corpus = [
        {"_id": f"d{i}", "title": f"{topics[i % 6]} note {i}", "text": f"The {topics[i % 6]} keeps part {i} safe."}
        for i in range(24)
    ]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [{"_id": f"q{i}", "text": f"how does the {topics[i]} keep parts safe"} for i in range(3)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    judged = [f"q{i}\td{i}\t1\n" for i in range(3)]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(judged))
    return root


@pytest.mark.slow  # each a subprocess of seconds; the fleet ones start llama-server replicas
@pytest.mark.parametrize("name", list(EXPECTED_KEYS))
def test_benchmark_smoke(name: str, tmp_path: Path) -> None:
    args = [sys.executable, str(BENCH / f"{name}.py"), "--smoke"]
    if name == "retrieval_scifact":
        args += ["--data", str(tiny_beir(tmp_path / "scifact"))]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, f"{name} --smoke failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    last = done.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert EXPECTED_KEYS[name] <= set(result), f"{name} ended with {last}"
    # A bench's throwaway homes go with it (the fleet ones hold a 240 MB copy of the weights each).
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("agentstack-")]
