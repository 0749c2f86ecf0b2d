"""Quality gates and the reports CI systems show: JUnit XML and Markdown.

`--min context_recall=0.7` fails when the metric's mean is below 0.7. `--max-drop faithfulness=0.05` fails when
the metric fell by more than 0.05 against the baseline on the items both scored *and* the paired bootstrap
interval of the change excludes zero: a drop that resampling the same items could produce is noise, not a
regression, and a gate that fires on noise gets switched off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from xml.etree import ElementTree as ET

from agentstack.errors import ConfigError
from agentstack.eval._results import Comparison, ExperimentResult, compare

__all__ = ["Gate", "GateResult", "check_gates", "junit_xml", "markdown_report", "parse_gates"]

_WORST = 5


@dataclass(frozen=True)
class Gate:
    metric: str
    kind: Literal["min", "max_drop"]
    threshold: float


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    passed: bool
    message: str


def parse_gates(minimum: Sequence[str], max_drop: Sequence[str], metrics: Sequence[str]) -> list[Gate]:
    """`metric=value` pairs, checked against the metrics the run scores."""
    gates = []
    for kind, pairs in (("min", minimum), ("max_drop", max_drop)):
        for pair in pairs:
            metric, sep, value = pair.partition("=")
            flag = "--min" if kind == "min" else "--max-drop"
            try:
                threshold = float(value)
            except ValueError:
                threshold = -1.0
            if not sep or not 0 <= threshold <= 1:
                raise ConfigError(
                    f"{flag} {pair!r} is not metric=value with a value from 0 to 1", fix=f"{flag} faithfulness=0.9"
                )
            if metric not in metrics:
                raise ConfigError(
                    f"{flag} names {metric!r}, which this run does not score",
                    fix=f"gate one of: {', '.join(metrics)} (or add it with --metric {metric})",
                )
            gates.append(Gate(metric, kind, threshold))  # type: ignore[arg-type]
    return gates


def check_gates(result: ExperimentResult, gates: Sequence[Gate], baseline: ExperimentResult | None) -> list[GateResult]:
    checked = []
    for gate in gates:
        if gate.kind == "min":
            mean = result.summary(gate.metric).mean
            passed = mean is not None and mean >= gate.threshold
            shown = "nothing scored" if mean is None else f"{mean:.3f}"
            checked.append(GateResult(gate, passed, f"{gate.metric} = {shown}, at least {gate.threshold} required"))
            continue
        if baseline is None:
            raise ConfigError("--max-drop compares with a baseline, and none was given", fix="add --baseline NAME")
        change = compare(baseline, result, gate.metric)
        checked.append(_drop(gate, change, baseline.name))
    return checked


def _drop(gate: Gate, change: Comparison, baseline: str) -> GateResult:
    if change.delta is None:
        return GateResult(gate, False, f"{gate.metric}: no item scored in both this run and {baseline}")
    interval = f"95% interval [{change.low:+.3f}, {change.high:+.3f}] over {change.shared} items"
    regressed = change.delta < -gate.threshold and change.significant
    verdict = "a regression" if regressed else ("within noise" if change.delta < -gate.threshold else "ok")
    message = (
        f"{gate.metric} changed {change.delta:+.3f} against {baseline} ({interval}); "
        f"at most -{gate.threshold}: {verdict}"
    )
    return GateResult(gate, not regressed, message)


def junit_xml(result: ExperimentResult, checked: Sequence[GateResult]) -> str:
    """One test case per gate (and one per metric, passing, with its mean), in a suite named after the run."""
    suite = ET.Element(
        "testsuite",
        name=f"agentstack eval {result.name}",
        tests=str(len(checked) + len(result.metrics)),
        failures=str(sum(1 for c in checked if not c.passed)),
    )
    for summary in result.summaries():
        case = ET.SubElement(suite, "testcase", classname=f"eval.{result.name}", name=f"metric {summary.name}")
        mean = "-" if summary.mean is None else f"{summary.mean:.4f}"
        ET.SubElement(
            case, "system-out"
        ).text = f"mean {mean} over {summary.scored} items; {summary.errors} errors; {summary.not_applicable} n/a"
    for gate in checked:
        case = ET.SubElement(
            suite, "testcase", classname=f"eval.{result.name}", name=f"gate {gate.gate.kind} {gate.gate.metric}"
        )
        if not gate.passed:
            ET.SubElement(case, "failure", message=gate.message).text = gate.message
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def markdown_report(result: ExperimentResult, checked: Sequence[GateResult], baseline: ExperimentResult | None) -> str:
    """A table of the metrics (and the change against the baseline), the gates, and the worst items."""
    lines = [f"# agentstack eval: {result.name}", ""]
    lines.append(
        f"Dataset `{result.dataset}` ({result.dataset_hash}), graph `{result.graph}`, {len(result.items)} items."
    )
    lines += [
        "",
        "| metric | mean | 95% interval | scored | errors | n/a |" + (" baseline | change |" if baseline else ""),
    ]
    lines.append("|---|---|---|---|---|---|" + ("---|---|" if baseline else ""))
    for s in result.summaries():
        mean = "-" if s.mean is None else f"{s.mean:.3f}"
        interval = "-" if s.low is None else f"[{s.low:.3f}, {s.high:.3f}]"
        row = f"| {s.name} | {mean} | {interval} | {s.scored} | {s.errors} | {s.not_applicable} |"
        if baseline is not None:
            change = compare(baseline, result, s.name)
            before = "-" if change.baseline is None else f"{change.baseline:.3f}"
            delta = "-" if change.delta is None else f"{change.delta:+.3f}" + (" *" if change.significant else "")
            row += f" {before} | {delta} |"
        lines.append(row)
    ops = result.operations()
    lines += [
        "",
        f"Latency p50 {ops['latency_p50_s']:.1f} s, p95 {ops['latency_p95_s']:.1f} s; "
        f"{ops['tokens_mean']:.0f} tokens per item; cost {ops['cost_total']:.4f}; "
        f"{int(ops['run_errors'])} failed run(s).",
    ]
    if checked:
        lines += ["", "## Gates", ""]
        lines += [f"- {'PASS' if c.passed else 'FAIL'}: {c.message}" for c in checked]
    lines += ["", "## Worst items", ""]
    for metric in result.metrics:
        scored = [
            (i.scores[metric].value, i)
            for i in result.items
            if i.scores.get(metric) and i.scores[metric].value is not None
        ]
        worst = sorted(scored, key=lambda pair: pair[0])[:_WORST]
        if not worst or worst[0][0] == 1.0:
            continue
        lines.append(f"**{metric}**")
        lines += [
            f"- `{item.example.id}` {value:.2f}: {item.example.text[:80]} ({item.scores[metric].reason[:120]})"
            for value, item in worst
        ]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
