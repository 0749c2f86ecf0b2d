"""`assert_quality`: an evaluation gate inside a test suite, with the message a failing CI run needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentstack.eval._results import ExperimentResult

__all__ = ["assert_quality"]


def assert_quality(
    result: ExperimentResult,
    minimum: Mapping[str, float] | None = None,
    *,
    baseline: ExperimentResult | None = None,
    max_drop: Mapping[str, float] | None = None,
    max_errors: int = 0,
) -> None:
    """Fail the test when a metric's mean is under its `minimum`, fell by more than `max_drop` against
    `baseline` beyond the bootstrap's noise, or more than `max_errors` items could not be scored or run.
    The message lists every failed gate and each failing metric's worst items."""
    from agentstack.eval._gates import check_gates, markdown_report, parse_gates

    gates = parse_gates(
        [f"{m}={v}" for m, v in (minimum or {}).items()],
        [f"{m}={v}" for m, v in (max_drop or {}).items()],
        list(result.metrics),
    )
    checked = check_gates(result, gates, baseline)
    problems = [c.message for c in checked if not c.passed]
    errors = result.operations()["run_errors"] + sum(s.errors for s in result.summaries())
    if errors > max_errors:
        problems.append(f"{int(errors)} item(s) failed to run or to be scored (at most {max_errors} allowed)")
    if problems:
        raise AssertionError(
            "quality gate failed:\n- " + "\n- ".join(problems) + "\n\n" + markdown_report(result, checked, baseline)
        )
