"""An experiment's results and what they add up to: per-metric means with bootstrap intervals, operations.

The interval is a percentile bootstrap of the mean over items (2,000 resamples, a fixed seed, so a report is
the same every time it is printed); a comparison resamples the items both experiments share, in pairs, which
is what makes a small dataset's deltas readable at all.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentstack.eval._dataset import Example
from agentstack.eval._types import Outcome, Score

__all__ = ["Comparison", "ExperimentResult", "ItemResult", "MetricSummary", "bootstrap_interval", "compare"]

_RESAMPLES = 2000
_SEED = 20261130


@dataclass(frozen=True)
class ItemResult:
    """One example, what the graph made of it, and every metric's score."""

    example: Example
    outcome: Outcome
    scores: Mapping[str, Score]


@dataclass(frozen=True)
class MetricSummary:
    """A metric over a dataset: mean of the scored items, its 95% interval, and what could not be scored."""

    name: str
    mean: float | None
    low: float | None
    high: float | None
    scored: int
    errors: int
    not_applicable: int


def bootstrap_interval(values: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values`."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    rng = random.Random(_SEED)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(_RESAMPLES))
    cut = (1 - level) / 2
    return means[int(cut * _RESAMPLES)], means[min(_RESAMPLES - 1, int((1 - cut) * _RESAMPLES))]


@dataclass(frozen=True)
class ExperimentResult:
    """A stored experiment: what ran (dataset, graph, configuration) and its items' results."""

    name: str
    dataset: str
    dataset_hash: str
    graph: str
    config: Mapping[str, Any]
    items: Sequence[ItemResult]
    created_at: datetime | None = None
    metrics: Sequence[str] = field(default_factory=tuple)  # in the order they were asked for

    def values(self, metric: str) -> dict[str, float]:
        """Item id -> score, for the items the metric scored."""
        found = {}
        for item in self.items:
            score = item.scores.get(metric)
            if score is not None and score.value is not None:
                found[item.example.id] = score.value
        return found

    def summary(self, metric: str) -> MetricSummary:
        scores = [item.scores[metric] for item in self.items if metric in item.scores]
        values = [s.value for s in scores if s.value is not None]
        errors = sum(1 for s in scores if s.error is not None)
        skipped = len(scores) - len(values) - errors
        if not values:
            return MetricSummary(metric, None, None, None, 0, errors, skipped)
        low, high = bootstrap_interval(values)
        return MetricSummary(metric, statistics.fmean(values), low, high, len(values), errors, skipped)

    def summaries(self) -> list[MetricSummary]:
        return [self.summary(m) for m in self.metrics]

    def operations(self) -> dict[str, float]:
        """Latency percentiles (s), tokens and cost per item, and how many runs failed."""
        latencies = sorted(i.outcome.latency_s for i in self.items)
        tokens = [i.outcome.tokens for i in self.items]
        return {
            "items": len(self.items),
            "run_errors": sum(1 for i in self.items if i.outcome.error is not None),
            "latency_p50_s": _percentile(latencies, 0.50),
            "latency_p95_s": _percentile(latencies, 0.95),
            "latency_p99_s": _percentile(latencies, 0.99),
            "tokens_mean": statistics.fmean(tokens) if tokens else 0.0,
            "tokens_total": float(sum(tokens)),
            "cost_total": sum(i.outcome.cost for i in self.items),
        }


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass(frozen=True)
class Comparison:
    """A metric in a candidate against a baseline, on the items both scored."""

    metric: str
    baseline: float | None
    candidate: float | None
    delta: float | None  # candidate - baseline, on the shared items
    low: float | None  # the delta's 95% interval (paired bootstrap)
    high: float | None
    shared: int
    regressed: list[tuple[str, float]]  # (item id, delta), worst first, the items that got worse

    @property
    def significant(self) -> bool:
        """The interval excludes 0: the change is more than resampling noise."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def compare(baseline: ExperimentResult, candidate: ExperimentResult, metric: str) -> Comparison:
    """`metric` in `candidate` against `baseline`, on the items both scored, with a paired bootstrap interval."""
    before, after = baseline.values(metric), candidate.values(metric)
    shared = sorted(set(before) & set(after))
    if not shared:
        return Comparison(metric, None, None, None, None, None, 0, [])
    deltas = [after[i] - before[i] for i in shared]
    low, high = bootstrap_interval(deltas)
    regressed = sorted(((i, d) for i, d in zip(shared, deltas, strict=True) if d < 0), key=lambda pair: pair[1])
    return Comparison(
        metric,
        statistics.fmean(before[i] for i in shared),
        statistics.fmean(after[i] for i in shared),
        statistics.fmean(deltas),
        low,
        high,
        len(shared),
        regressed,
    )
