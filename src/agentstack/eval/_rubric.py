"""LLM-as-judge: a rubric (your pydantic model of 1-5 criteria) scored per answer, and pairwise preference.

    class Helpful(BaseModel):
        \"\"\"Is the answer useful to someone who asked the question?\"\"\"
        correct: int = Field(ge=1, le=5, description="1: wrong, 3: partly right, 5: right in every claim")
        complete: int = Field(ge=1, le=5, description="1: misses the point, 5: answers all of it")

    metric = Rubric(Helpful, repeats=3)   # score = mean of (grade - 1) / 4 over criteria; spread over repeats

The judge is asked for the criteria plus `reasons` and `issues`, every field bounded, through the same
structured-output path as everything else. `repeats > 1` asks again at the judge's retry temperature and
reports the spread (a greedy judge repeats itself exactly: spread 0 says so rather than hiding it).

Pairwise (`prefer`) asks in both orders and keeps a winner only when both orders agree; when they disagree the
judge preferred a position, not an answer, and the result is a tie.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model

from agentstack.errors import ConfigError, ModelOutputError
from agentstack.eval._judge import Judge
from agentstack.eval._metrics_judged import JudgedMetric
from agentstack.eval._types import Sample, Score

__all__ = ["Preference", "Rubric", "prefer"]


def _criteria(rubric: type[BaseModel]) -> dict[str, str]:
    """Field name -> description, checked to be 1-5 integers."""
    found = {}
    for name, field in rubric.model_fields.items():
        bounds = {type(m).__name__: m for m in field.metadata}
        low, high = getattr(bounds.get("Ge"), "ge", None), getattr(bounds.get("Le"), "le", None)
        if field.annotation is not int or (low, high) != (1, 5):
            raise ConfigError(
                f"rubric {rubric.__name__}: criterion {name!r} is not an int from 1 to 5",
                fix=f'{name}: int = Field(ge=1, le=5, description="1: ..., 5: ...")',
            )
        found[name] = field.description or name
    if not found:
        raise ConfigError(f"rubric {rubric.__name__} has no criteria", fix="give it int fields from 1 to 5")
    return found


class Rubric(JudgedMetric):
    """Mean over criteria of (grade - 1) / 4, from a judge that read the question, the answer (and reference)."""

    version: ClassVar[int] = 1

    def __init__(self, rubric: type[BaseModel], *, repeats: int = 1, name: str | None = None) -> None:
        if repeats < 1:
            raise ConfigError(f"repeats is at least 1, got {repeats}", fix="repeats=3 reports the spread")
        self.criteria = _criteria(rubric)
        self.rubric = rubric
        self.repeats = repeats
        self.name = name or f"rubric:{rubric.__name__}"
        self.schema = create_model(
            f"{rubric.__name__}Judgement",
            __base__=rubric,
            __doc__=rubric.__doc__,
            reasons=(str, Field(max_length=400, description="why these grades, in two sentences")),
            issues=(list[Annotated[str, Field(max_length=160)]], Field(default_factory=list, max_length=3)),
        )

    async def judge(self, sample: Sample, judge: Judge) -> Score:
        grades: list[BaseModel] = []
        for attempt in range(self.repeats):
            grades.append(
                await judge.ask(
                    "rubric",
                    self.schema,
                    resample=attempt,
                    question=sample.example.text,
                    answer=sample.outcome.answer,
                    reference=sample.example.reference or "",
                    criteria=self.criteria,
                )
            )
        scores = [statistics.fmean((getattr(g, c) - 1) / 4 for c in self.criteria) for g in grades]
        details: dict[str, Any] = {c: [getattr(g, c) for g in grades] for c in self.criteria}
        details["issues"] = sorted({i for g in grades for i in getattr(g, "issues", [])})
        details["spread"] = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        return Score(statistics.fmean(scores), reason=str(getattr(grades[0], "reasons", "")), details=details)


class _Choice(BaseModel):
    """Which answer is better."""

    reason: str = Field(max_length=300, description="one or two sentences")
    better: Literal["first", "second", "tie"]


@dataclass(frozen=True)
class Preference:
    """`winner` "a", "b" or "tie"; `consistent` False when the two orders disagreed (then a tie)."""

    winner: Literal["a", "b", "tie"]
    consistent: bool
    reasons: tuple[str, str]


async def prefer(judge: Judge, question: str, a: str, b: str, *, criteria: str = "") -> Preference:
    """Ask which of two answers is better, in both orders; a winner only when both orders agree."""
    variables = {"question": question, "criteria": criteria or "correct, complete and supported by facts"}
    try:
        first = await judge.ask("pairwise", _Choice, first=a, second=b, **variables)
        second = await judge.ask("pairwise", _Choice, first=b, second=a, **variables)
    except ModelOutputError as exc:
        raise ModelOutputError(f"the pairwise judgement failed: {exc.problem}", fix=exc.fix) from exc
    one = {"first": "a", "second": "b", "tie": "tie"}[first.better]
    two = {"first": "b", "second": "a", "tie": "tie"}[second.better]
    reasons = (first.reason, second.reason)
    if one == two:
        return Preference(one, True, reasons)  # type: ignore[arg-type]
    return Preference("tie", False, reasons)
