"""`Metric`: the base every score is a subclass of, ours and yours.

A metric has a `name` (what reports and gates call it), a `version` (bumped when its definition changes, so a
cached judgement from the old definition is never reused) and `async score(sample, judge)`. Deterministic
metrics ignore `judge`; judged ones (`judged = True`) ask it through structured output.

    class MentionsPostgres(Metric):
        name = "mentions_postgres"
        async def score(self, sample, judge=None):
            return Score(float("postgres" in sample.outcome.answer.lower()))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from agentstack.eval._types import Sample, Score

if TYPE_CHECKING:
    from agentstack.eval._judge import Judge

__all__ = ["Metric"]


class Metric(ABC):
    """A documented, versioned score in [0, 1] of one sample; higher is better."""

    name: str
    version: ClassVar[int] = 1
    judged: ClassVar[bool] = False  # needs a judge model

    @abstractmethod
    async def score(self, sample: Sample, judge: Judge | None = None) -> Score:
        """The score of `sample`; an error is a `Score.failed(...)`, never an exception or NaN."""

    @property
    def options(self) -> dict[str, object]:
        """The settings its scores depend on that its name does not say (`ContextPrecision`'s k)."""
        return {}

    @property
    def key(self) -> str:
        """Name, version and options: what a stored score and a cached judgement are filed under (a judgement
        made with other options is another judgement)."""
        options = "".join(f";{name}={value}" for name, value in sorted(self.options.items()))
        return f"{self.name}@v{self.version}{options}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, v{self.version})"
