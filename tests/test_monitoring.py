"""What ships in serving/monitoring: the alert rules pass `promtool check rules` and their own unit tests
(`promtool test rules`: each alert fires on the series that should fire it, and only after its `for:`), and every
metric a dashboard panel or an alert names is one the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agentstack.api._metrics import metrics_text
from agentstack.api._runs import QueueStats
from agentstack.observability import Metrics
from agentstack.serving._metrics import BackendStats, FleetMetrics
from agentstack.serving._nvml import GpuCollector
from agentstack.serving._replica import Replica

MONITORING = Path(__file__).parent.parent / "serving" / "monitoring"
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: ./dev installs the Debian package prometheus")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=MONITORING)


def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert fired == alerts  # every alert is shown to fire


def exported_names() -> set[str]:
    """Every sample name agentstack's collectors can export."""
    replica = Replica(model="m", index=0, base_url="http://127.0.0.1:1")
    stats = BackendStats(1, 1, 1, 1, kv_cache_usage=0.5, prefix_cache_hit_rate=0.5)
    fleet = FleetMetrics(lambda: [replica], lambda: {replica: stats})
    families = [*Metrics().registry.collect(), *fleet.registry.collect(), *GpuCollector().describe()]
    queue = metrics_text(QueueStats({"pending": 0}, {"idle": 0}, 0, 0.0), workers_alive=1, workers=1).decode()
    families += list(text_string_to_metric_families(queue))
    names = set()
    for family in families:
        names.add(family.name)
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ())}
    return names


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bagentstack_[a-z0-9_]+", expr))


def test_every_dashboard_panel_and_alert_names_a_metric_the_code_exports() -> None:
    exported = exported_names()
    assert "agentstack_runs_ended_total" in exported and "agentstack_gpu_memory_used_bytes" in exported
    named: dict[str, set[str]] = {}
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"].startswith("agentstack-") and dashboard["panels"]
        for panel in dashboard["panels"]:
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert named_metrics(target["expr"]), f"{path.name}: {target['expr']!r} names no agentstack metric"
                named.setdefault(f"{path.name}: {panel['title']}", set()).update(named_metrics(target["expr"]))
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            named[f"alerts.yaml: {rule['alert']}"] = named_metrics(rule["expr"])
    unknown = {where: sorted(names - exported) for where, names in named.items() if names - exported}
    assert not unknown, f"queries name metrics nothing exports: {unknown}"
    assert len(named) > 25
