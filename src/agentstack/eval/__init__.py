"""Evaluation: datasets, metrics (retrieval, answer, judged), experiments stored in Postgres, CI gates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "AnswerRelevancy": "agentstack.eval._metrics_judged",
    "CitationValidity": "agentstack.eval._metrics_answer",
    "CitesGold": "agentstack.eval._metrics_answer",
    "Comparison": "agentstack.eval._results",
    "Context": "agentstack.eval._types",
    "ContextPrecision": "agentstack.eval._metrics_judged",
    "ContextRecall": "agentstack.eval._metrics_judged",
    "Dataset": "agentstack.eval._dataset",
    "ExactMatch": "agentstack.eval._metrics_answer",
    "Example": "agentstack.eval._dataset",
    "ExperimentResult": "agentstack.eval._results",
    "ExperimentStore": "agentstack.eval._store",
    "Faithfulness": "agentstack.eval._metrics_judged",
    "GraphTarget": "agentstack.eval._runner",
    "HitRate": "agentstack.eval._metrics_retrieval",
    "ItemResult": "agentstack.eval._results",
    "Judge": "agentstack.eval._judge",
    "JudgedMetric": "agentstack.eval._metrics_judged",
    "MRR": "agentstack.eval._metrics_retrieval",
    "Metric": "agentstack.eval._metric",
    "MetricSummary": "agentstack.eval._results",
    "NDCG": "agentstack.eval._metrics_retrieval",
    "Outcome": "agentstack.eval._types",
    "Precision": "agentstack.eval._metrics_retrieval",
    "Preference": "agentstack.eval._rubric",
    "Recall": "agentstack.eval._metrics_retrieval",
    "Rubric": "agentstack.eval._rubric",
    "Sample": "agentstack.eval._types",
    "Score": "agentstack.eval._types",
    "Target": "agentstack.eval._runner",
    "TokenF1": "agentstack.eval._metrics_answer",
    "compare": "agentstack.eval._results",
    "default_metrics": "agentstack.eval._catalog",
    "metric_from_name": "agentstack.eval._catalog",
    "prefer": "agentstack.eval._rubric",
    "run_experiment": "agentstack.eval._runner",
}
__all__ = [
    "AnswerRelevancy",
    "CitationValidity",
    "CitesGold",
    "Comparison",
    "Context",
    "ContextPrecision",
    "ContextRecall",
    "Dataset",
    "ExactMatch",
    "Example",
    "ExperimentResult",
    "ExperimentStore",
    "Faithfulness",
    "GraphTarget",
    "HitRate",
    "ItemResult",
    "Judge",
    "JudgedMetric",
    "MRR",
    "Metric",
    "MetricSummary",
    "NDCG",
    "Outcome",
    "Precision",
    "Preference",
    "Recall",
    "Rubric",
    "Sample",
    "Score",
    "Target",
    "TokenF1",
    "compare",
    "default_metrics",
    "metric_from_name",
    "prefer",
    "run_experiment",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.eval._catalog import default_metrics, metric_from_name
    from agentstack.eval._dataset import Dataset, Example
    from agentstack.eval._judge import Judge
    from agentstack.eval._metric import Metric
    from agentstack.eval._metrics_answer import CitationValidity, CitesGold, ExactMatch, TokenF1
    from agentstack.eval._metrics_judged import (
        AnswerRelevancy,
        ContextPrecision,
        ContextRecall,
        Faithfulness,
        JudgedMetric,
    )
    from agentstack.eval._metrics_retrieval import MRR, NDCG, HitRate, Precision, Recall
    from agentstack.eval._results import Comparison, ExperimentResult, ItemResult, MetricSummary, compare
    from agentstack.eval._rubric import Preference, Rubric, prefer
    from agentstack.eval._runner import GraphTarget, Target, run_experiment
    from agentstack.eval._store import ExperimentStore
    from agentstack.eval._types import Context, Outcome, Sample, Score
