"""The RAG metrics that need a judge, as RAGAS defines them (docs/eval.md has the formulas).

- faithfulness = supported answer claims / answer claims. A claim is a sentence of the answer (RAGAS asks the
  LLM to restate the answer as statements; splitting deterministically removes one run-to-run variance and one
  way for a small judge to fail); it is checked against the passages it cites, or all retrieved ones when it
  cites none, by the judge's `SupportScorer` (the one the research graph grounds its answers with).
- answer relevancy = cosine(question, q) for the question q the judge writes from the answer alone, its first
  3 sentences together (RAGAS: from the whole answer, averaging 3 questions); 0 when the answer is
  noncommittal ("I don't know", "the documents do not say"). The judge writes `drafts` questions, greedily,
  each after the prompt's examples in another order, and the one nearest the answer counts: a small judge's
  miss ("What is the default value for the model?") is its own failure, not the answer's, and it rarely misses
  in every order. On the docs dataset's 30 answers and the same 30 under another question (right / swapped /
  right higher), v4's question per sentence scored 0.402 / 0.240 / 23 of 30 and this 0.491 / 0.270 / 26
  (docs/eval.md): an extractive answer's later sentences are on the topic, not the point, and asked one at a
  time each pulled the score down.
  RAGAS has the judge flag noncommittal answers too; here their phrases do, since a small judge's yes/no is
  noise (the CPU Gemma called most of 30 committed answers noncommittal).
- context precision = sum over the top K of precision@k * v_k / (useful passages in the top K), v_k = 1 when
  passage k supports a sentence of the reference answer (the judge's support scorer, as for context recall);
  without a reference, when the judge model finds it useful for reaching the answer.
- context recall = reference sentences the retrieved passages support / reference sentences.

A judgement that fails (the judge's reply never parses) is `Score.failed` with the reason: counted, not NaN.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from agentstack._aio import all_or_none
from agentstack.errors import ConfigError, ModelOutputError
from agentstack.eval._judge import Judge
from agentstack.eval._metric import Metric
from agentstack.eval._types import Context, Sample, Score
from agentstack.graphs._support import cited_sentences, cosine, sentences

__all__ = ["AnswerRelevancy", "ContextPrecision", "ContextRecall", "Faithfulness", "JudgedMetric"]


class JudgedMetric(Metric):
    """A metric that asks `judge`; `needs_model`: it asks the judge's model, not only its embedder."""

    judged: ClassVar[bool] = True
    needs_model: ClassVar[bool] = True
    needs_embedder: ClassVar[bool] = False

    async def score(self, sample: Sample, judge: Judge | None = None) -> Score:
        if judge is None:
            return Score.failed(f"{self.name} needs a judge")
        try:
            return await self.judge(sample, judge)
        except ModelOutputError as exc:
            return Score.failed(f"the judge's reply never parsed: {exc.problem}")

    @abstractmethod
    async def judge(self, sample: Sample, judge: Judge) -> Score:
        """The score, asking `judge`; `ModelOutputError` from it becomes the item's recorded error."""


def _passages(contexts: Sequence[Context]) -> list[str]:
    """The passages' texts, whole: a support scorer that asks a model shows it the part that matters."""
    return [context.text for context in contexts]


class Faithfulness(JudgedMetric):
    """Supported answer sentences / answer sentences (each checked against what it cites, else everything)."""

    name = "faithfulness"
    needs_model = False  # the embedder's support scorer will do; a judge model's is better

    async def judge(self, sample: Sample, judge: Judge) -> Score:
        claims = cited_sentences(sample.outcome.answer)
        if not claims:
            return Score.not_applicable("the answer makes no claim")
        by_id = {c.id: c for c in sample.outcome.contexts}
        against = [_passages([by_id[i] for i in cited if i in by_id] or sample.outcome.contexts) for _, cited in claims]
        verdicts = await all_or_none(_supported(judge, claim, p) for (claim, _), p in zip(claims, against, strict=True))
        unsupported = [claim for (claim, _), ok in zip(claims, verdicts, strict=True) if not ok]
        value = 1 - len(unsupported) / len(claims)
        reason = f"{len(claims) - len(unsupported)} of {len(claims)} sentence(s) supported"
        return Score(value, reason=reason, details={"unsupported": unsupported})


class ContextRecall(JudgedMetric):
    """Reference sentences the retrieved passages support / reference sentences."""

    name = "context_recall"
    needs_model = False

    async def judge(self, sample: Sample, judge: Judge) -> Score:
        if sample.example.reference is None:
            return Score.not_applicable("the example has no reference answer")
        claims = sentences(sample.example.reference) or [sample.example.reference]
        passages = _passages(sample.outcome.contexts)
        verdicts = await all_or_none(_supported(judge, claim, passages) for claim in claims)
        missing = [claim for claim, ok in zip(claims, verdicts, strict=True) if not ok]
        value = 1 - len(missing) / len(claims)
        reason = f"{len(claims) - len(missing)} of {len(claims)} reference sentence(s) found"
        return Score(value, reason=reason, details={"not_found": missing})


_SENTENCES_ASKED = 3  # an answer makes its point first; the CPU Gemma shown all of a 5-sentence one wandered
_QUESTION = r"^(What|How|Why|When|Which|Who|Where|Does|Do|Is|Are|Can|Should) [A-Za-z0-9 ,'`_.-]{8,140}\?$"


class AnswerQuestion(BaseModel):
    """The question an answer answers."""

    # The grammar holds it to the shape of a question (an interrogative first, a question mark last): the CPU
    # Gemma, asked for free strings, wrote digits, "yes" and JSON fragments.
    question: str = Field(max_length=160, pattern=_QUESTION)


_EVASIVE = re.compile(
    r"\b(?:i (?:do not|don't) know|(?:cannot|can't|could not|couldn't) (?:answer|say|tell|find)|not sure|"
    r"no information|(?:does|do|did) not (?:say|answer|mention|tell)|it depends|unclear)\b",
    re.IGNORECASE,
)


class AnswerRelevancy(JudgedMetric):
    """Cosine between the question and the question the judge writes from the answer's first sentences together
    (the nearest to them of `drafts` written); 0 if the answer is noncommittal."""

    name = "answer_relevancy"
    version: ClassVar[int] = 5  # v5: of the first 3 sentences together (v3-v4: one question a sentence)
    needs_embedder = True

    def __init__(self, drafts: int = 4) -> None:
        if drafts < 1:
            raise ConfigError(f"AnswerRelevancy(drafts={drafts}) writes no question", fix="drafts=1 or more")
        self.drafts = drafts

    @property
    def options(self) -> dict[str, object]:
        return {"drafts": self.drafts}

    async def judge(self, sample: Sample, judge: Judge) -> Score:
        answer = sample.outcome.answer
        if not answer.strip():
            return Score(0.0, reason="the answer is empty")
        if evasive := _EVASIVE.search(answer):
            return Score(0.0, reason=f"the answer is noncommittal ({evasive.group(0)!r})")
        said = " ".join(claim for claim, _ in cited_sentences(answer)[:_SENTENCES_ASKED]) or answer.strip()
        asked = await self._question_for(judge, said)
        question, generated = await judge.embed([sample.example.text, asked])
        return Score(max(0.0, min(1.0, cosine(question, generated))), reason=f"the answer answers: {asked}")

    async def _question_for(self, judge: Judge, answer: str) -> str:
        """Of the judge's drafts for `answer` (one per order of the examples), the one nearest it. A draft that
        copies an example's question is the prompt's, not the answer's (a small model continues the last
        example it read); when every draft does, the judge is asked once more, sampling."""
        replies = await all_or_none(
            judge.ask("answer_question", AnswerQuestion, answer=answer, rotation=n) for n in range(self.drafts)
        )
        examples = judge.prompt("answer_question").system
        drafts = list(dict.fromkeys(r.question for r in replies if f'"{r.question}"' not in examples))
        if not drafts:
            reply = await judge.ask("answer_question", AnswerQuestion, resample=1, answer=answer, rotation=0)
            return reply.question
        if len(drafts) == 1:
            return drafts[0]
        target, *vectors = await judge.embed([answer, *drafts])
        nearest = max(range(len(drafts)), key=lambda n: cosine(target, vectors[n]))
        return drafts[nearest]


class Usefulness(BaseModel):
    """Whether one passage helps to reach the answer."""

    reason: str = Field(max_length=300)
    verdict: Literal["useful", "not_useful"]


class ContextPrecision(JudgedMetric):
    """Rank-weighted precision of the passages useful for the reference answer, top `k`."""

    name = "context_precision"
    version: ClassVar[int] = 2  # v2: useful = supports a reference sentence
    needs_model = False  # with a reference, the support scorer decides

    def __init__(self, k: int = 5) -> None:
        self.k = k

    @property
    def options(self) -> dict[str, object]:
        return {"k": self.k}

    async def judge(self, sample: Sample, judge: Judge) -> Score:
        contexts = sample.outcome.contexts[: self.k]
        if not contexts:
            return Score(0.0, reason="nothing was retrieved")
        reference = sample.example.reference
        if reference is None and judge.model is None:
            return Score.not_applicable("no reference answer, and no judge model to ask about the answer")
        claims = (sentences(reference) or [reference]) if reference is not None else []

        async def useful_for(passage: str) -> bool:
            if claims:
                return await _supports_any(judge, claims, passage)
            reply = await judge.ask(
                "context_useful", Usefulness, question=sample.example.text, answer=sample.outcome.answer,
                passage=passage[:1200],
            )  # fmt: skip
            return reply.verdict == "useful"

        verdicts = await all_or_none(useful_for(context.text) for context in contexts)
        useful = sum(verdicts)
        if not useful:
            return Score(0.0, reason=f"none of the top {len(contexts)} passages is useful")
        weighted = sum(sum(verdicts[: k + 1]) / (k + 1) for k, v in enumerate(verdicts) if v)
        marks = "".join("+" if v else "-" for v in verdicts)
        return Score(weighted / useful, reason=f"useful by rank: {marks}")


async def _supported(judge: Judge, claim: str, passages: list[str]) -> bool:
    return bool(passages) and (await judge.support.support(claim, passages)).supported


async def _supports_any(judge: Judge, claims: Sequence[str], passage: str) -> bool:
    """In turn, not together: the first supported claim settles it, and the passages are judged together."""
    for claim in claims:
        if (await judge.support.support(claim, [passage])).supported:
            return True
    return False
