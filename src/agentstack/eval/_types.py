"""What metrics read and write: an example's run (`Sample`: the example and its `Outcome`) and a `Score`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentstack.eval._dataset import Example

__all__ = ["Context", "Outcome", "Sample", "Score"]


@dataclass(frozen=True)
class Context:
    """A passage the graph retrieved, in rank order; `id` is what the answer cites it by ("S1")."""

    id: str
    text: str
    source: str = ""
    chunk_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What one run of the graph produced for one example. `error` set: the run failed, nothing else is real."""

    answer: str = ""
    contexts: tuple[Context, ...] = ()
    cited: tuple[str, ...] = ()  # the context ids the answer cites
    removed_citations: tuple[str, ...] = ()  # ids the model cited that no search returned (removed from the answer)
    latency_s: float = 0.0
    tokens: int = 0
    cost: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the graph's own fields (status, confidence...)

    def cited_contexts(self) -> list[Context]:
        by_id = {c.id: c for c in self.contexts}
        return [by_id[i] for i in self.cited if i in by_id]


@dataclass(frozen=True)
class Sample:
    """An example and what the graph made of it: the one argument every metric scores."""

    example: Example
    outcome: Outcome


@dataclass(frozen=True)
class Score:
    """A metric's verdict on one sample.

    `value` in [0, 1]; `error` when it could not be computed (a judge that never answered in shape): counted and
    shown, never NaN, never dropped. Neither: the metric does not apply (no reference answer to compare with).
    """

    value: float | None
    reason: str = ""
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value is not None and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a score is in [0, 1], got {self.value}")

    @classmethod
    def failed(cls, error: str) -> Score:
        return cls(None, error=error)

    @classmethod
    def not_applicable(cls, reason: str) -> Score:
        return cls(None, reason=reason)

    @property
    def status(self) -> str:
        return "error" if self.error is not None else ("n/a" if self.value is None else "ok")
