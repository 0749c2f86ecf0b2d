"""Prometheus metrics of runs and requests, read from the agent server's and the gateway's `/metrics` and checked
by `promtool check metrics` (the exposition format Prometheus itself parses)."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from langgraph_sdk import get_client
from prometheus_client.parser import text_string_to_metric_families

from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.checkpoint import PoolSaver
from agentstack.observability import Metrics, Observability
from agentstack.safety import KeyStore
from api_helpers import serving
from test_tracing import agent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample in Prometheus text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= set(ls))


def promtool_accepts(text: str) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: ./dev installs the Debian package prometheus")
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    # `check metrics` also lints names (a counter's _total); errors are what Prometheus could not parse
    assert "error" not in (checked.stdout + checked.stderr).lower(), checked.stdout + checked.stderr


async def test_the_agent_server_counts_runs_nodes_tokens_cost_and_requests(saver: PoolSaver) -> None:
    keys = KeyStore(saver.conn)
    await keys.setup()
    admin = await keys.create("ops", admin=True)
    metrics = Metrics(prices={"gemma-3-270m": {"input": 1.0, "output": 2.0}})
    graphs = ServedGraphs([ServedGraph("helpdesk", agent(saver))])
    app = app_on(RunQueue(saver.conn), graphs, workers=1, observability=Observability(None, metrics))
    async with serving(app) as url:
        client = get_client(url=url, api_key=admin.secret)
        for _ in range(2):
            await client.runs.wait(None, "helpdesk", input={"steps": []})
        async with httpx.AsyncClient(base_url=url) as raw:
            assert (await raw.get("/threads/nope")).status_code == 401  # no key: refused at the door
            text = (await raw.get("/metrics", headers={"x-api-key": admin.secret})).text
    found = samples(text)
    assert value(found, "agentstack_runs_started_total", graph="helpdesk") == 2
    assert value(found, "agentstack_runs_ended_total", graph="helpdesk", outcome="success") == 2
    assert value(found, "agentstack_node_duration_seconds_count", graph="helpdesk", node="think") == 2
    assert value(found, "agentstack_model_tokens_total", model="gemma-3-270m", direction="input") == 22
    assert value(found, "agentstack_model_tokens_total", model="gemma-3-270m", direction="output") == 6
    assert value(found, "agentstack_model_cost_usd_total", graph="helpdesk") == pytest.approx((22 + 12) / 1000)
    assert (
        value(found, "agentstack_http_requests_total", route="/runs/wait", status="200", caller=admin.key.key_id) == 2
    )
    assert value(found, "agentstack_http_rejections_total", server="api", reason="auth") == 1
    assert value(found, "agentstack_http_requests_total", route="/threads/{thread_id}", status="401") == 1
    assert value(found, "agentstack_checkpoint_batch_operations_sum") >= 6  # 3 steps a run, group-committed
    assert value(found, "agentstack_checkpoint_commit_seconds_count") >= 1
    assert ("agentstack_api_runs", (("status", "pending"),)) in found  # the queue's own figures are there too
    promtool_accepts(text)
