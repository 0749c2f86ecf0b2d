"""Our retrieval metrics against pytrec_eval (the reference TREC implementation): equal to 1e-6."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import pytrec_eval

from agentstack.eval import Context, Example, Outcome, Sample
from agentstack.eval._metrics_retrieval import (
    HitRate,
    Recall,
    gold_ranking,
    hit_rate_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
CUTOFFS = (1, 3, 5, 10, 100)
MEASURES = {f"{m}.{','.join(map(str, CUTOFFS))}" for m in ("ndcg_cut", "recall", "P", "success")} | {"recip_rank"}


def assert_agree(qrels: dict[str, dict[str, int]], rankings: dict[str, list[str]]) -> int:
    """Every query's every metric equal to pytrec_eval's; the number of values compared."""
    # A strictly decreasing score per rank: trec_eval sorts by score, so the order is exactly ours.
    run = {q: {doc: float(len(docs) - rank) for rank, doc in enumerate(docs)} for q, docs in rankings.items()}
    reference = pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)
    compared = 0
    for query, expected in reference.items():
        ranking, relevant = rankings[query], qrels[query]
        ours = {"recip_rank": reciprocal_rank(ranking, relevant)}
        for k in CUTOFFS:
            ours |= {
                f"ndcg_cut_{k}": ndcg_at_k(ranking, relevant, k),
                f"recall_{k}": recall_at_k(ranking, relevant, k),
                f"P_{k}": precision_at_k(ranking, relevant, k),
                f"success_{k}": hit_rate_at_k(ranking, relevant, k),
            }
        for measure, value in ours.items():
            assert math.isclose(value, expected[measure], abs_tol=1e-6), (query, measure, value, expected[measure])
            compared += 1
    return compared


def test_random_graded_runs_agree_with_pytrec_eval() -> None:
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(60)]
    qrels: dict[str, dict[str, int]] = {}
    rankings: dict[str, list[str]] = {}
    for q in range(300):
        judged = rng.sample(docs, rng.randint(1, 12))
        # grades 0..3, at least one relevant; 0 (judged, not relevant) as TREC allows
        qrels[f"q{q}"] = {d: rng.randint(0, 3) for d in judged} | {judged[0]: rng.randint(1, 3)}
        rankings[f"q{q}"] = rng.sample(docs, rng.randint(1, 40))
    assert assert_agree(qrels, rankings) == 300 * (1 + 4 * len(CUTOFFS))


def test_a_repeated_id_counts_once_at_its_first_rank() -> None:
    relevant = {"a": 1, "b": 1}
    assert recall_at_k(["a", "a", "b"], relevant, 2) == 1.0  # the repeat takes no rank: b is second
    assert precision_at_k(["a", "a", "c"], relevant, 3) == pytest.approx(1 / 3)


@pytest.mark.slow  # 8 s: BM25 over 5,183 abstracts in Python
@pytest.mark.skipif(not SCIFACT.exists(), reason=f"the SciFact data is not at {SCIFACT}")
def test_scifact_bm25_run_agrees_with_pytrec_eval() -> None:
    """A real run: BM25 (k1 0.9, b 0.4) over SciFact's 5,183 abstracts for its 300 test queries, top 100."""
    word = re.compile(r"\w+")
    corpus = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()]
    postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
    lengths = []
    for n, doc in enumerate(corpus):
        counts = Counter(word.findall(f"{doc['title']} {doc['text']}".lower()))
        lengths.append(sum(counts.values()))
        for term, tf in counts.items():
            postings[term].append((n, tf))
    mean_length = sum(lengths) / len(lengths)
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, doc, grade = line.split("\t")
        qrels[query][doc] = int(grade)
    queries = {q["_id"]: q["text"] for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())}
    rankings = {}
    for query in qrels:
        scores: dict[int, float] = defaultdict(float)
        for term in set(word.findall(queries[query].lower())):
            idf = math.log(1 + (len(corpus) - len(postings[term]) + 0.5) / (len(postings[term]) + 0.5))
            for n, tf in postings[term]:
                scores[n] += idf * tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * lengths[n] / mean_length))
        best = sorted(scores, key=lambda n: (-scores[n], n))[:100]
        rankings[query] = [corpus[n]["_id"] for n in best]
    assert assert_agree(dict(qrels), rankings) == len(qrels) * (1 + 4 * len(CUTOFFS))
    mean_ndcg10 = sum(ndcg_at_k(rankings[q], qrels[q], 10) for q in qrels) / len(qrels)
    assert 0.5 < mean_ndcg10 < 0.8  # BM25's known range on SciFact: the run is a real one


def _sample(contexts: list[str], golds: list[str], ids: tuple[str, ...] = ()) -> Sample:
    example = Example(id="1", question="q", reference_contexts=tuple(golds), reference_context_ids=ids)
    ctx = tuple(Context(id=f"S{n}", text=text, chunk_id=f"c{n}") for n, text in enumerate(contexts, 1))
    return Sample(example, Outcome(answer="a", contexts=ctx))


def test_gold_passages_are_found_by_their_text_even_across_a_chunk_boundary() -> None:
    gold = "PoolSaver commits the writes of many threads in one transaction."
    sample = _sample(
        ["Unrelated text.", "... many threads in one transaction. Then", f"Intro. {gold.upper()} More."],
        [gold, "A text nobody retrieved."],
    )
    ranking, relevant = gold_ranking(sample)
    assert ranking == ["c1", "c2", "gold:0"]  # the cut copy has under 80% of the gold text
    assert relevant == {"gold:0": 1.0, "gold:1": 1.0}
    almost = _sample([gold[3:]], [gold])  # all but 3 characters of it
    assert gold_ranking(almost)[0] == ["gold:0"]


async def test_rank_metrics_score_samples_and_say_why() -> None:
    sample = _sample(["nothing", "the gold sentence here"], ["gold sentence"], ids=("c1",))
    score = await Recall(5).score(sample)
    assert score.value == 1.0 and score.reason == "2 of 2 gold passage(s) in the top 5"
    assert (await HitRate(1).score(sample)).value == 1.0  # c1 is gold by id
    no_gold = await Recall(5).score(_sample(["x"], []))
    assert no_gold.value is None and no_gold.status == "n/a"
