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
    "graph_overhead": {
        "agentstack_p50_ms",
        "handwritten_p50_ms",
        "agentstack_traced_p50_ms",
        "agentstack_served_p50_ms",
        "overhead_ratio",
        "tracing_overhead_ratio",
        "tracing_overhead_ratio_no_callbacks",
        "spans_exported",
        "runs",
    },
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
    "router_overhead": {
        "p50_added_ms",
        "p99_added_ms",
        "p50_added_ms_traced",
        "p99_added_ms_traced",
        "p50_router_self_ms",
        "p99_router_self_ms",
        "p50_router_self_ms_traced",
        "p99_router_self_ms_traced",
        "spans_exported",
        "requests",
    },
    "affinity": {"ttft_rr_over_affinity", "throughput_affinity_over_rr", "prefill_rr_over_affinity"},
    "embedder_load": {"st_over_plain", "plain_load_s", "st_load_s", "max_abs_diff", "rounds"},
    "research_latency": {"written_over_extractive", "extractive_p50_s", "written_p50_s", "stack_open_s", "ingest_s"},
    "guard_overhead": {
        "p50_added_ms_api",
        "p99_added_ms_api",
        "p50_added_ms_gateway",
        "p99_added_ms_gateway",
        "requests",
        "pii_f1",
        "injection_recall",
        "injection_false_positive_rate",
        "injection_recall_held_out",
    },
    "api_runs": {
        "runs_per_s_vs_langgraph_dev",
        "runs_per_s_agentstack",
        "runs_per_s_agentstack_1w",
        "runs_per_s_langgraph_dev",
        "p99_ms_agentstack",
        "p99_ms_langgraph_dev",
        "first_event_ms_agentstack",
        "first_event_ms_langgraph_dev",
    },
}


# Benchmarks too heavy for the suite, and what tests their code instead. eval_agreement needs RAGAS in a venv
# of its own (pip, minutes) and RAGAS's calls on the CPU Gemma take minutes per item.
NOT_SMOKED = {"eval_agreement": "test_eval_agreement_statistics"}


def test_every_benchmark_is_covered() -> None:
    assert {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")} == set(EXPECTED_KEYS) | set(NOT_SMOKED)


def test_eval_agreement_statistics() -> None:
    """Its Spearman is scipy's, a constant side gives no correlation, and the spread counts only items both
    tools scored in every repeat."""
    from scipy.stats import spearmanr

    sys.path.insert(0, str(BENCH))
    try:
        import eval_agreement as bench
    finally:
        sys.path.remove(str(BENCH))
    xs, ys = [0.1, 0.5, 0.5, 0.9, 0.3, 0.7], [0.2, 0.4, 0.6, 0.8, 0.8, 0.1]
    assert bench.correlation(bench.ranks(xs), bench.ranks(ys)) == pytest.approx(spearmanr(xs, ys)[0], abs=1e-3)
    assert bench.correlation([1, 2, 3], [5, 5, 5]) is None

    def run(*faithfulness: float | None) -> list[dict[str, float | None]]:
        return [{m: f for m in bench.METRICS} for f in faithfulness]

    ours = [run(1.0, 0.5, 0.0, 0.2), run(1.0, 0.5, 0.0, 0.4)]  # items 1-2 good, 3-4 broken
    theirs = [run(0.8, 0.6, 0.2, None), run(0.6, 0.6, 0.2, 0.3)]
    result = bench.summary(ours, theirs, good=2)
    assert result["faithfulness_good_minus_broken_agentstack"] == pytest.approx(0.6)
    assert result["faithfulness_good_minus_broken_ragas"] == pytest.approx(0.45)
    assert result["std_agentstack"] == 0.0 and result["std_ragas"] == pytest.approx(0.1 / 3, abs=1e-4)
    assert result["std_agentstack_over_ragas"] == 0.0 and result["spearman_faithfulness"] == pytest.approx(1.0)
    assert bench.nan_count(theirs) == 4 and result["nan_agentstack"] == 0
    exact = [run(1.0, 0.5, 0.0, 0.2), run(1.0, 0.5, 0.5, 0.4)]  # the exact side is measured the same way
    assert bench.spread(exact, theirs) == (
        pytest.approx(0.25 / 3, abs=1e-4),
        result["std_ragas"],
        pytest.approx(2.5, abs=0.01),
    )


async def test_eval_agreement_scores_each_repeat_without_the_cache() -> None:
    """Our side of the bench: every repeat judges again, a good item and its broken copy score apart."""
    from agentstack.eval import Context, Example, Judge, Outcome, Sample
    from agentstack.testing import HashingEmbedder, schema_model

    sys.path.insert(0, str(BENCH))
    try:
        import eval_agreement as bench
    finally:
        sys.path.remove(str(BENCH))
    passage = "PoolSaver commits the writes of many threads in one transaction."
    example = Example(id="1", question="How does PoolSaver commit writes?", reference=passage)
    contexts = (Context(id="S1", text=passage),)
    good = Sample(example, Outcome(answer=f"{passage[:-1]} [S1].", contexts=contexts, cited=("S1",)))
    broken = Sample(
        example.model_copy(update={"id": "1/broken"}),
        Outcome(answer="Milvus Lite keeps its vectors in one local file [S1].", contexts=contexts, cited=("S1",)),
    )
    asked: list[str] = []

    def question(prompt: str) -> dict[str, str]:
        asked.append(prompt)
        answer = prompt.rsplit("Answer:", 1)[1]
        return {"question": "How does PoolSaver commit writes?" if "PoolSaver" in answer else "What is Milvus Lite?"}

    judge = Judge(schema_model(AnswerQuestion=question), embedder=HashingEmbedder())
    runs = await bench.our_scores([good, broken], judge, repeats=2, concurrency=2)
    assert len(runs) == 2 and len(asked) == 2 * 2 * 4  # judged again in the second repeat (four drafts an answer)
    for run in runs:
        assert set(run[0]) == set(bench.METRICS)
        assert run[0]["faithfulness"] > run[1]["faithfulness"]
        assert run[0]["answer_relevancy"] > run[1]["answer_relevancy"]


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
