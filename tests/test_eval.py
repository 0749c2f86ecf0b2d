"""agentstack.eval: datasets, metrics, judged metrics on a scripted judge, experiments in a real Postgres."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from agentstack.checkpoint import open_pool
from agentstack.errors import ConfigError, UserError
from agentstack.eval import (
    CitationValidity,
    CitesGold,
    Context,
    Dataset,
    ExactMatch,
    Example,
    Outcome,
    Recall,
    Sample,
    TokenF1,
)
from agentstack.eval._judge import Judge
from agentstack.eval._metrics_judged import AnswerRelevancy, ContextPrecision, ContextRecall, Faithfulness
from agentstack.eval._results import bootstrap_interval, compare
from agentstack.eval._rubric import Rubric, prefer
from agentstack.eval._runner import run_experiment
from agentstack.eval._store import ExperimentStore
from agentstack.testing import HashingEmbedder, schema_model

PASSAGES = {
    "S1": "PoolSaver commits the writes of many threads in one transaction.",
    "S2": "The router sends a thread to the replica that served it before.",
}


# -- datasets ---------------------------------------------------------------------------------------
def test_jsonl_csv_and_lists_load_the_same_examples(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "question": "What batches writes?", "reference": "PoolSaver", "reference_contexts": ["x y"]},
        {"id": "b", "input": {"task": "sum 2 and 2"}, "tags": ["math"]},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.csv").write_text(
        "id,question,input,reference,reference_contexts,tags\na,What batches writes?,,PoolSaver,x y,\n"
        'b,,"{""task"": ""sum 2 and 2""}",,,"[""math""]"\n'
    )
    from_list = Dataset.from_list(rows, name="d")
    assert Dataset.load(tmp_path / "d.jsonl").examples == from_list.examples
    assert Dataset.load(tmp_path / "d.csv").examples == from_list.examples
    assert from_list.hash == Dataset.load(tmp_path / "d.jsonl").hash
    assert from_list.examples[1].text == '{"task": "sum 2 and 2"}'
    assert [e.id for e in from_list.select(tags=["math"])] == ["b"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"id": "1", "question": "ok"}\n{"id": "2", "question": "broken"\n', "d.jsonl, line 2: not JSON"),
        ('{"id": "1", "question": "ok"}\n\n{"id": "2"}\n', "d.jsonl, line 3: the example: Value error, give a"),
        ('{"id": "1", "question": "ok", "answer": "x"}\n', "d.jsonl, line 1: answer: Extra inputs are not permitted"),
        ('{"id": "1", "question": "a"}\n{"id": "1", "question": "b"}\n', "has the id '1' more than once"),
        ("[1, 2]\n", "line 1: an example is an object"),
    ],
)
def test_a_bad_dataset_line_is_named(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        Dataset.load(path)
    assert problem in caught.value.problem


def test_the_shipped_docs_dataset_loads_and_its_gold_texts_are_in_the_docs() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    dataset = Dataset.load(docs / "eval" / "agentstack-docs.jsonl")
    assert len(dataset) >= 20
    corpus = " ".join(re.sub(r"\s+", " ", p.read_text()).lower() for p in docs.glob("*.md"))
    for example in dataset:
        assert example.reference and example.reference_contexts, example.id
        for gold in example.reference_contexts:
            assert re.sub(r"\s+", " ", gold).lower() in corpus, (example.id, gold)


# -- deterministic metrics ----------------------------------------------------------------------------
def sample(
    answer: str, cited: tuple[str, ...] = (), removed: tuple[str, ...] = (), reference: str | None = None
) -> Sample:
    example = Example(
        id="1", question="How are writes batched?", reference=reference, reference_contexts=("many threads in one",)
    )
    contexts = tuple(Context(id=i, text=t, source="docs.md", chunk_id=f"c-{i}") for i, t in PASSAGES.items())
    return Sample(example, Outcome(answer=answer, contexts=contexts, cited=cited, removed_citations=removed))


async def test_squad_exact_match_and_token_f1() -> None:
    assert (await ExactMatch().score(sample("The PoolSaver!", reference="poolsaver"))).value == 1.0
    f1 = await TokenF1().score(sample("PoolSaver batches writes", reference="PoolSaver commits writes together"))
    assert f1.value == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert (await TokenF1().score(sample("x"))).status == "n/a"


async def test_citation_metrics() -> None:
    assert (await CitationValidity().score(sample("a [S1]", cited=("S1",), removed=("S9",)))).value == 0.5
    assert (await CitationValidity().score(sample("a"))).status == "n/a"
    assert (await CitesGold().score(sample("a", cited=("S1",)))).value == 1.0
    assert (await CitesGold().score(sample("a", cited=("S2",)))).value == 0.0


# -- judged metrics on a scripted judge ------------------------------------------------------------------
def fact_checker(prompt: str) -> dict[str, str]:
    """Supported when the sentence's words all appear in the passages shown."""
    sentence = prompt.split("Sentence:", 1)[1].split("Passages:", 1)[0]
    passages = prompt.split("Passages:", 1)[1].lower()
    words = re.findall(r"\w+", sentence.lower())
    ok = all(w in passages for w in words)
    verdict = "supported" if ok else "not_supported"
    return {"reason": "all its words are there" if ok else "it says more", "verdict": verdict}


def question_writer(prompt: str) -> dict[str, object]:
    """The question an answer answers: the answer itself, asked (the prompt's examples come first)."""
    answer = prompt.rsplit("Answer:", 1)[1].split("Question:", 1)[0].strip().rstrip(".")
    return {"question": f"What does {answer}?"}


def judge(*, embedder: bool = True, **replies: object) -> Judge:
    """A scripted judge; with the embedder its support checks cascade (the embedder settles the clear cases)."""
    model = schema_model(**{"SupportVerdict": fact_checker, "AnswerQuestion": question_writer, **replies})
    return Judge(model, embedder=HashingEmbedder() if embedder else None)


async def test_faithfulness_counts_supported_sentences_and_tells_broken_answers_apart() -> None:
    good = sample("PoolSaver commits the writes of many threads in one transaction [S1].", cited=("S1",))
    broken = sample("PoolSaver commits writes [S1]. The moon is made of cheese and sings [S2].", cited=("S1", "S2"))
    scores = [await Faithfulness().score(s, judge()) for s in (good, broken)]
    assert [s.value for s in scores] == [1.0, 0.5]
    assert scores[1].details["unsupported"] == ["The moon is made of cheese and sings."]
    # the embedder's support scorer, without a judge model, tells them apart too
    by_embedding = [await Faithfulness().score(s, Judge(embedder=HashingEmbedder())) for s in (good, broken)]
    assert by_embedding[0].value == 1.0 and by_embedding[1].value is not None and by_embedding[1].value < 1.0


async def test_an_answer_to_another_question_scores_lower_on_faithfulness_and_relevancy() -> None:
    """bench/eval_agreement.py's broken items, on the scripted judge: the answer to another question, put under
    this one (its sentences follow from other passages and answer something else)."""
    good = sample("PoolSaver commits the writes of many threads in one transaction [S1].")
    broken = sample("Milvus Lite keeps its vectors in one local file that a single process may open [S1].")
    for metric in (Faithfulness(), AnswerRelevancy()):
        scores = [(await metric.score(s, judge())).value for s in (good, broken)]
        assert scores[0] is not None and scores[1] is not None and scores[0] > scores[1], (metric.name, scores)


async def test_answer_relevancy_asks_about_the_first_three_sentences_together_without_their_citations() -> None:
    shown: list[str] = []

    def writer(prompt: str) -> dict[str, object]:
        shown.append(prompt.rsplit("Answer:", 1)[1].split("Question:", 1)[0].strip())
        return question_writer(prompt)

    answer = "PoolSaver batches writes [S1]. Milvus Lite keeps vectors [S2]. The fleet runs llama.cpp [S1][S2]. " + (
        "This one is not shown."
    )
    score = await AnswerRelevancy().score(sample(answer), judge(AnswerQuestion=writer))
    whole = "PoolSaver batches writes. Milvus Lite keeps vectors. The fleet runs llama.cpp."
    assert shown == [whole] * 4  # four drafts, each after the examples in another order
    assert score.value is not None and score.reason == f"the answer answers: What does {whole[:-1]}?"


async def test_answer_relevancy_asks_again_when_the_judge_copies_an_example() -> None:
    """A small model continues the last example it was shown; that question is the prompt's, not the answer's."""
    copied = "How long does the cache keep an entry?"
    assert f'"{copied}"' in Judge(embedder=HashingEmbedder()).prompt("answer_question").system
    asked = 0

    def copier(_prompt: str) -> dict[str, object]:
        nonlocal asked
        asked += 1  # every draft copies; the sampled retry after them does not
        return {"question": copied if asked <= 4 else "What does PoolSaver commit in one transaction?"}

    score = await AnswerRelevancy(drafts=4).score(
        sample("PoolSaver commits many threads' writes in one transaction [S1]."), judge(AnswerQuestion=copier)
    )
    assert asked == 5
    assert score.reason == "the answer answers: What does PoolSaver commit in one transaction?"


async def test_answer_relevancy_keeps_the_draft_nearest_the_answer() -> None:
    """Each draft follows the examples in another order; a draft that strays from the answer loses to one that
    stays (whatever the question asked was: the choice looks at the answer alone)."""
    firsts: list[str] = []

    def writer(prompt: str) -> dict[str, object]:
        firsts.append(prompt.split("Answer:", 2)[1].split("\n", 1)[0].strip())
        if len(firsts) == 3:
            return question_writer(prompt)
        return {"question": f"What is the default value for draft {len(firsts)}?"}

    score = await AnswerRelevancy(drafts=4).score(
        sample("PoolSaver commits many threads' writes in one transaction [S1]."), judge(AnswerQuestion=writer)
    )
    assert len(set(firsts)) == 4  # four orders of the examples, one first example each
    assert score.reason == "the answer answers: What does PoolSaver commits many threads' writes in one transaction?"
    single = await AnswerRelevancy(drafts=1).score(
        sample("PoolSaver commits many threads' writes in one transaction [S1]."), judge(AnswerQuestion=writer)
    )
    assert single.reason == "the answer answers: What is the default value for draft 5?"


def test_a_judged_metric_files_its_options_with_its_judgements() -> None:
    """A cached judgement made with other options (how many drafts, which k) is another judgement."""
    assert AnswerRelevancy(drafts=2).key != AnswerRelevancy().key == "answer_relevancy@v5;drafts=4"
    assert ContextPrecision(k=3).key != ContextPrecision().key
    with pytest.raises(ConfigError, match="writes no question"):
        AnswerRelevancy(drafts=0)


async def test_answer_relevancy_is_zero_for_a_noncommittal_answer() -> None:
    relevant = await AnswerRelevancy().score(sample("writes are batched"), judge())
    evasive = await AnswerRelevancy().score(sample("I do not know"), judge())
    assert relevant.value is not None and relevant.value > 0.3
    assert evasive.value == 0.0 and evasive.reason == "the answer is noncommittal ('I do not know')"


async def test_context_precision_and_recall() -> None:
    def useful(prompt: str) -> dict[str, str]:
        return {"reason": "r", "verdict": "useful" if "PoolSaver" in prompt.split("Passage:")[1] else "not_useful"}

    s = sample("a", reference="PoolSaver commits the writes of many threads in one transaction.")
    precision = await ContextPrecision().score(s, judge(Usefulness=useful))
    assert precision.value == 1.0 and precision.reason == "useful by rank: +-"
    recall = await ContextRecall().score(s, judge())
    assert recall.value == 1.0


async def test_a_judge_that_never_parses_is_an_error_not_nan() -> None:
    broken = judge(SupportVerdict="not json at all")
    score = await Faithfulness().score(sample("PoolSaver commits writes [S1].", cited=("S1",)), broken)
    assert score.value is None and score.status == "error" and "never parsed" in (score.error or "")


# -- experiments -----------------------------------------------------------------------------------------
class Answers:
    """A target answering from a table, counting its calls."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls = 0

    async def __call__(self, example: Example) -> Outcome:
        self.calls += 1
        if example.id not in self.answers:
            return Outcome(error="GraphInputError: no answer")
        contexts = tuple(Context(id=i, text=t, chunk_id=i) for i, t in PASSAGES.items())
        return Outcome(answer=self.answers[example.id], contexts=contexts, cited=("S1",), tokens=10, latency_s=0.1)


DATASET = Dataset.from_list(
    [
        {"id": str(n), "question": f"q{n}", "reference": "PoolSaver", "reference_contexts": ["many threads"]}
        for n in range(6)
    ],
    name="tiny",
)


async def test_experiments_are_stored_compared_and_reuse_cached_judgements(agentstack_postgres: str) -> None:
    async with open_pool(agentstack_postgres, max_size=4) as pool:
        store = ExperimentStore(pool)
        await store.setup()
        metrics = [Recall(5), TokenF1(), Faithfulness()]
        good = {str(n): "PoolSaver commits the writes of many threads in one transaction [S1]." for n in range(6)}
        first_judge = judge(embedder=False)  # every support check asks the model
        await run_experiment(Answers(good), DATASET, metrics, name="base", graph="test", judge=first_judge, store=store)
        assert first_judge.tokens_used > 0
        again_judge = judge(embedder=False)
        again = Answers(good)
        await run_experiment(again, DATASET, metrics, name="again", graph="test", judge=again_judge, store=store)
        assert again_judge.tokens_used == 0  # every judgement came from the cache

        worse = dict(good, **{"4": "The moon sings [S1].", "5": "The sun dances [S1]."})
        del worse["3"]  # a run that fails scores 0
        candidate = await run_experiment(
            Answers(worse), DATASET, metrics, name="cand", graph="test", judge=judge(), store=store
        )
        loaded = await store.load("cand")
        assert loaded.items == candidate.items and loaded.metrics == ("recall@5", "token_f1", "faithfulness")
        assert loaded.operations()["run_errors"] == 1
        summary = loaded.summary("faithfulness")
        assert summary.mean == pytest.approx(0.5) and summary.scored == 6
        change = compare(await store.load("base"), loaded, "faithfulness")
        assert change.delta == pytest.approx(-0.5) and change.significant
        assert [i for i, _ in change.regressed] == ["3", "4", "5"]
        assert [n[0] for n in await store.names()][:3] == ["cand", "again", "base"]
        with pytest.raises(ConfigError, match="already stored"):
            await run_experiment(Answers(good), DATASET, metrics, name="base", graph="test", judge=judge(), store=store)
        assert await store.delete("base") and not await store.exists("base")
        with pytest.raises(UserError, match="no experiment named 'base'"):
            await store.load("base")


async def test_metrics_are_checked_before_anything_runs() -> None:
    target = Answers({})
    with pytest.raises(ConfigError, match="answer_relevancy asks a judge model"):
        await run_experiment(
            target, DATASET, [AnswerRelevancy()], name="x", graph="t", judge=Judge(embedder=HashingEmbedder())
        )
    with pytest.raises(ConfigError, match="two metrics are named 'recall@5'"):
        await run_experiment(target, DATASET, [Recall(5), Recall(5)], name="x", graph="t")
    assert target.calls == 0


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible() -> None:
    values = [0.0, 1.0] * 20
    low, high = bootstrap_interval(values)
    assert low < 0.5 < high and (low, high) == bootstrap_interval(values)


# -- rubric and pairwise ---------------------------------------------------------------------------------------
class Helpful(BaseModel):
    """Is the answer useful to someone who asked?"""

    correct: int = Field(ge=1, le=5, description="1: wrong, 5: right in every claim")
    complete: int = Field(ge=1, le=5, description="1: misses the point, 5: answers all of it")


async def test_a_rubric_scores_its_criteria_and_reports_the_spread_of_repeats() -> None:
    grades = iter([(5, 4), (3, 4)])

    def grader(prompt: str) -> dict[str, object]:
        assert "- correct: 1: wrong, 5: right in every claim" in prompt and "Reference answer: PoolSaver" in prompt
        correct, complete = next(grades)
        return {"correct": correct, "complete": complete, "reasons": "r", "issues": ["vague"]}

    score = await Rubric(Helpful, repeats=2).score(sample("x", reference="PoolSaver"), judge(HelpfulJudgement=grader))
    assert score.value == pytest.approx(((1 + 0.75) / 2 + (0.5 + 0.75) / 2) / 2)
    assert score.details["correct"] == [5, 3] and score.details["spread"] == pytest.approx(0.125)
    assert score.details["issues"] == ["vague"]


def test_a_rubric_criterion_must_be_a_one_to_five_integer() -> None:
    class Loose(BaseModel):
        correct: int = Field(ge=0, le=10)

    with pytest.raises(ConfigError, match="criterion 'correct' is not an int from 1 to 5"):
        Rubric(Loose)


async def test_pairwise_keeps_a_winner_only_when_both_orders_agree() -> None:
    def consistent(prompt: str) -> dict[str, str]:
        first = prompt.split("First answer:")[1].split("Second answer:")[0]
        return {"reason": "r", "better": "first" if "good" in first else "second"}

    def positional(prompt: str) -> dict[str, str]:
        return {"reason": "r", "better": "first"}

    agreed = await prefer(judge(_Choice=consistent), "q", "a good answer", "a poor one")
    assert agreed.winner == "a" and agreed.consistent
    biased = await prefer(judge(_Choice=positional), "q", "a good answer", "a poor one")
    assert biased.winner == "tie" and not biased.consistent


async def test_a_model_server_that_is_down_stops_the_experiment_and_stores_nothing(agentstack_postgres: str) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    from agentstack.errors import BackendError
    from agentstack.eval import GraphTarget
    from agentstack.graphs import build_research_graph
    from agentstack.graphs._research import RESEARCH_GRAPH
    from agentstack.testing import InMemoryRetriever

    model = schema_model(Plan=BackendError("the model server for research/plan could not be reached"))
    graph = build_research_graph(model, InMemoryRetriever.from_texts(PASSAGES), checkpointer=InMemorySaver())
    async with open_pool(agentstack_postgres, max_size=2) as pool:
        store = ExperimentStore(pool)
        await store.setup()
        with pytest.raises(BackendError, match="could not be reached"):
            await run_experiment(
                GraphTarget(graph, RESEARCH_GRAPH), DATASET, [Recall(5)], name="x", graph="research", store=store
            )
        assert not await store.exists("x")


async def test_the_cascade_asks_the_judge_only_where_the_embedder_is_unsure() -> None:
    from agentstack.graphs._support import CascadeSupport, EmbeddingSupport, JudgeSupport

    asked: list[str] = []

    def verdict(prompt: str) -> dict[str, str]:
        asked.append(prompt)
        return {"reason": "r", "verdict": "not_supported"}

    cascade = CascadeSupport(EmbeddingSupport(HashingEmbedder()), JudgeSupport(schema_model(SupportVerdict=verdict)))
    passage = [PASSAGES["S1"]]
    copied = await cascade.support("PoolSaver commits the writes of many threads in one transaction.", passage)
    unrelated = await cascade.support("Bananas ripen faster in paper bags at night.", passage)
    assert copied.supported and not unrelated.supported and asked == []
    unsure = await cascade.support("PoolSaver commits many writes of threads quickly.", passage)
    assert not unsure.supported and len(asked) == 1 and cascade.tokens_used > 0


async def test_stored_answers_are_judged_again_without_running_the_graph(agentstack_postgres: str) -> None:
    from agentstack.eval._runner import ReplayTarget

    async with open_pool(agentstack_postgres, max_size=2) as pool:
        store = ExperimentStore(pool)
        await store.setup()
        answers = Answers(
            {str(n): "PoolSaver commits the writes of many threads in one transaction [S1]." for n in range(5)}
        )
        await run_experiment(answers, DATASET, [Recall(5)], name="ran", graph="test", store=store)
        replay = ReplayTarget(await store.load("ran"))
        again = await run_experiment(
            replay, DATASET, [TokenF1(), Faithfulness()], name="rejudged", graph="test", judge=judge(), store=store
        )
    assert answers.calls == 6  # only the first experiment ran the target
    by_id = {i.example.id: i for i in again.items}
    assert by_id["0"].outcome.answer.startswith("PoolSaver") and by_id["0"].scores["faithfulness"].value == 1.0
    assert by_id["5"].outcome.error == "GraphInputError: no answer"  # a failed run stays failed
    missing = await replay(Example(id="new", question="q"))
    assert missing.error == "experiment 'ran' has no answer for it"

    # the CLI refuses examples it never answered (each would be a failed run scoring 0), naming the fix
    replay.refuse_unanswered(DATASET)
    assert replay.graph == "test"
    more = Dataset.from_list([*({"id": e.id, "question": e.text} for e in DATASET), {"id": "x", "question": "q"}])
    with pytest.raises(ConfigError, match=r"answered 6 of the 7 examples to judge \(none for x\)") as refused:
        replay.refuse_unanswered(more)
    assert refused.value.fix == "add --limit 6"
    first = Dataset.from_list([{"id": "x", "question": "q"}, *({"id": e.id, "question": e.text} for e in DATASET)])
    with pytest.raises(ConfigError) as refused:
        replay.refuse_unanswered(first)
    assert refused.value.fix == "judge a dataset of only the examples it answered"
