"""Prometheus metrics of runs and requests, read from the agent server's and the gateway's `/metrics` and checked
by `promtool check metrics` (the exposition format Prometheus itself parses)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from agentstack._net import free_port
from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.checkpoint import PoolSaver
from agentstack.observability import Metrics, Observability
from agentstack.observability._usage import UsageStore
from agentstack.safety import KeyStore
from api_helpers import samples, serving, value
from cli_helpers import clean_env, run_agentstack, wait_until_answering
from graph_helpers import agent


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
    rows = await UsageStore(saver.conn).report("caller")  # and each run's usage is a row, by model
    assert [(r.key, r.runs, r.input_tokens, r.output_tokens) for r in rows] == [(admin.key.key_id, 2, 22, 6)]


VLLM_METRICS = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.42
vllm:prefix_cache_queries_total{engine="0",model_name="llama"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="llama"} 250.0
vllm:prompt_tokens_total{engine="0",model_name="llama"} 1000.0
vllm:generation_tokens_total{engine="0",model_name="llama"} 300.0
"""
SGLANG_METRICS = """sglang:num_running_reqs{model_name="qwen",tp_rank="0"} 2.0
sglang:num_running_reqs{model_name="qwen",tp_rank="1"} 2.0
sglang:num_queue_reqs{model_name="qwen",tp_rank="0"} 0.0
sglang:token_usage{model_name="qwen",tp_rank="0"} 0.5
sglang:token_usage{model_name="qwen",tp_rank="1"} 0.7
sglang:cache_hit_rate{model_name="qwen",tp_rank="0"} 0.8
sglang:prompt_tokens_total{model_name="qwen",tp_rank="0"} 10.0
sglang:generation_tokens_total{model_name="qwen",tp_rank="0"} 5.0
"""


async def test_a_stack_reports_to_the_observability_it_is_given(agentstack_postgres: str, tmp_path: Path) -> None:
    """The agent server's one `Observability`: the stack's checkpoint commits and runs count into it, and the
    stack leaves it to its maker; a stack given none makes its own and forgets it when it closes."""
    from agentstack._stack import Stack
    from agentstack.config import Settings

    settings = Settings(postgres_url=agentstack_postgres, home=tmp_path)
    given = Observability()
    async with Stack(settings, models=False, retrieval=False, observability=given) as stack:
        config: dict[str, object] = {"configurable": {"thread_id": "given-1"}}
        async with stack.observed(config, graph="g", thread_id="given-1"):
            await agent(stack.saver).ainvoke({"steps": []}, config)
        assert stack.saver is not None
        rows = await UsageStore(stack.saver.conn).report("thread")  # stored as the run ended
        assert [(r.key, r.input_tokens, r.output_tokens) for r in rows if r.key == "given-1"] == [("given-1", 11, 3)]
    assert stack.observability is given
    found = samples(given.metrics.render().decode())
    assert value(found, "agentstack_runs_started_total", graph="g") == 1
    assert value(found, "agentstack_checkpoint_commit_seconds_count") >= 1  # the stack's saver reports here
    async with Stack(settings, models=False, retrieval=False) as own:
        assert own.observability is not None and own.observability is not given
    assert own.observability is None


def test_kv_cache_and_prefix_cache_figures_are_read_in_each_backends_own_names() -> None:
    from agentstack.serving._backends import SglangBackend, VllmBackend
    from agentstack.serving._metrics import parse_backend_metrics

    vllm = parse_backend_metrics(VLLM_METRICS, VllmBackend.metrics)
    assert vllm.kv_cache_usage == 0.42 and vllm.prefix_cache_hit_rate == 0.25 and vllm.requests_running == 3
    sglang = parse_backend_metrics(SGLANG_METRICS, SglangBackend.metrics)
    assert sglang.kv_cache_usage == pytest.approx(0.6)  # a ratio is averaged over the ranks, not summed
    assert sglang.prefix_cache_hit_rate == 0.8 and sglang.requests_running == 4  # counts are summed


def test_without_a_gpu_the_gpu_telemetry_exports_nothing_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from agentstack.serving._nvml import GpuCollector, gpu_inventory

    if gpu_inventory():
        pytest.skip("this machine has a GPU: the telemetry is checked where there is none")
    registry = CollectorRegistry()
    registry.register(GpuCollector())
    with caplog.at_level("INFO", logger="agentstack.serving._nvml"):
        assert generate_latest(registry) == b"" and generate_latest(registry) == b""
    assert [r.message for r in caplog.records if "no GPU telemetry" in r.message] != []
    assert len([r for r in caplog.records if "no GPU telemetry" in r.message]) == 1


async def test_usage_rows_sum_by_model_graph_and_caller_priced_per_token_or_per_gpu_hour(
    saver: PoolSaver, agentstack_postgres: str, tmp_path: Path
) -> None:
    prices = {
        "hosted": {"input": 2.0, "output": 8.0},  # USD per 1,000 tokens
        "own-gpu": {"gpu_hour": 3.6, "tokens_per_s": 100, "prompt_tokens_per_s": 1000},  # 0.001 USD a GPU-second
    }
    store = UsageStore(saver.conn, prices)
    await store.setup()
    await store.setup()  # idempotent
    await store.record(run_id="r1", thread_id="t1", graph="research", caller="k1", by_model={"hosted": (1000, 500)})
    await store.record(
        run_id="r2", thread_id="t2", graph="team", caller=None, by_model={"hosted": (500, 0), "own-gpu": (10_000, 200)}
    )
    await store.record(run_id="r3", thread_id="t3", graph="team", caller="k1", by_model={"unpriced": (7, 3)})
    by_model = {r.key: r for r in await store.report("model")}
    assert by_model["hosted"].cost_usd == pytest.approx(2.0 + 4.0 + 1.0) and by_model["hosted"].runs == 2
    assert by_model["own-gpu"].cost_usd == pytest.approx(0.001 * (10 + 2))  # 10 s of prompt, 2 s generating
    assert by_model["unpriced"].cost_usd is None
    by_graph = {r.key: (r.runs, r.input_tokens) for r in await store.report("graph")}
    assert by_graph == {"research": (1, 1000), "team": (2, 10_507)}
    by_caller = {r.key: r.runs for r in await store.report("caller")}
    assert by_caller == {"k1": 2, "-": 1}
    assert await store.report("model", since_s=0.000001) == []  # nothing that recent

    env = {"AGENTSTACK_POSTGRES_URL": agentstack_postgres, "AGENTSTACK_HOME": str(tmp_path),
           "AGENTSTACK_PRICES": json.dumps(prices)}  # fmt: skip
    shown = run_agentstack("usage", "--by", "graph", "--format", "csv", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "graph,runs,input_tokens,output_tokens,cost_usd"
    assert shown.stdout.splitlines()[1] == "research,1,1000,500,6.0"  # the most expensive first
    assert shown.stdout.splitlines()[2].startswith("team,2,10507,203,1.01")
    table = run_agentstack("usage", "--since", "7d", env=env)
    assert table.returncode == 0 and "hosted" in table.stdout and "no price" in table.stdout, table.stdout
    wrong = run_agentstack("usage", "--by", "color", env=env)
    assert wrong.returncode == 1 and "--by model, graph, caller or thread" in wrong.stderr
    assert "Traceback" not in wrong.stderr


WRITER = """
import sys
from agentstack.observability import Metrics
metrics = Metrics()
for _ in range(int(sys.argv[1])):
    metrics.runs_started.labels("mine").inc()
"""


def test_agentstack_metrics_serves_the_sum_of_a_library_users_processes(tmp_path: Path) -> None:
    """Two processes of your own write their metrics into one directory; `agentstack metrics` serves the sum."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    for count in ("2", "3"):
        env = clean_env() | {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
        subprocess.run([sys.executable, "-c", WRITER, count], env=env, check=True, timeout=60)
    port = free_port()
    agentstack = str(Path(sys.executable).with_name("agentstack"))
    command = [agentstack, "metrics", "--port", str(port), "--dir", str(shared)]
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, env=clean_env(), **piped) as server:  # type: ignore[call-overload]
        try:
            wait_until_answering(server, f"http://127.0.0.1:{port}/metrics", timeout=30)
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            server.send_signal(signal.SIGTERM)
            out, err = server.communicate(timeout=30)
    assert 'agentstack_runs_started_total{graph="mine"} 5.0' in text
    assert server.returncode == 0 and "metrics: stopped" in out, err
    missing = run_agentstack("metrics", "--dir", str(tmp_path / "nope"), env={})
    assert missing.returncode == 1 and "is not a directory" in missing.stderr and "Traceback" not in missing.stderr
