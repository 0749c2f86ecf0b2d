"""`agentstack api`: the registered graphs on the real stack, called with `langgraph_sdk`, stopped by a signal."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from langgraph_sdk import get_sync_client

from agentstack._net import free_port
from cli_helpers import assert_quiet, clean_env, run_agentstack, wait_until_answering
from fleet_helpers import tiny_spec_file
from graph_helpers import DOCS


def test_a_bind_beyond_this_machine_needs_a_key_and_a_busy_port_is_refused(
    tmp_path: Path, agentstack_postgres: str
) -> None:
    env = {"AGENTSTACK_HOME": str(tmp_path / "home"), "AGENTSTACK_POSTGRES_URL": agentstack_postgres}
    wide = run_agentstack("api", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert wide.returncode == 1 and "no API key exists to ask callers for" in wide.stderr, wide.stderr
    assert "agentstack keys create" in wide.stderr
    made = run_agentstack("keys", "create", "--name", "ci", "--scope", "assistants=research", "--read-only", env=env)
    assert made.returncode == 0, made.stderr
    key_id = re.search(r"key ([0-9a-f]{12}) \(ci\)", made.stdout)[1]  # type: ignore[index]
    assert re.search(rf"ask_{key_id}_\S{{43}}", made.stdout) and "assistants research" in made.stdout
    listed = run_agentstack("keys", "list", env=env | {"COLUMNS": "200"})
    assert key_id in listed.stdout and "active" in listed.stdout and "ask_" not in listed.stdout  # never shown again
    rotated = run_agentstack("keys", "rotate", key_id, env=env)
    assert rotated.returncode == 0 and "has a new secret" in rotated.stdout
    assert run_agentstack("keys", "revoke", key_id, env=env).returncode == 0
    again = run_agentstack("keys", "revoke", key_id, env=env)
    assert again.returncode == 1 and "already revoked" in again.stderr
    bad = run_agentstack("keys", "create", "--name", "x", "--budget", "lots", env=env)
    assert bad.returncode == 1 and "--budget 20/day" in bad.stderr
    assert_quiet(wide.stderr + made.stderr + listed.stderr + again.stderr + bad.stderr)
    env = {"AGENTSTACK_HOME": str(tmp_path / "home"), "AGENTSTACK_POSTGRES_URL": "postgresql://nobody@127.0.0.1:9/x"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run_agentstack("api", "--port", str(port), env=env)
    assert taken.returncode == 1 and f"the agent server cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert_quiet(taken.stderr)


@pytest.mark.slow
def test_the_research_graph_over_http_then_a_clean_stop(
    tmp_path: Path, agentstack_postgres: str, fleet_home: Path
) -> None:
    """Two worker processes on the fleet and the Milvus Lite index their supervisor started and shares."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    env = {
        "AGENTSTACK_HOME": str(fleet_home),  # where the CPU Gemma's weights are assembled
        "AGENTSTACK_MILVUS_URI": str(tmp_path / "milvus.db"),
        "AGENTSTACK_POSTGRES_URL": agentstack_postgres,
        "AGENTSTACK_FLEET": str(tiny_spec_file(tmp_path / "fleet.yaml", replicas=1)),
    }
    ingested = run_agentstack("ingest", str(docs), env=env)
    assert ingested.returncode == 0, ingested.stderr
    port = free_port()
    agentstack = str(Path(sys.executable).with_name("agentstack"))
    server = subprocess.Popen(
        [agentstack, "api", "--port", str(port), "--workers", "2"],
        env=clean_env() | env | {"COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(server, f"{url}/ok", timeout=120)
        client = get_sync_client(url=url)
        assert sorted(a["graph_id"] for a in client.assistants.search()) == ["approval", "research", "team"]
        thread = client.threads.create()
        question = {"question": "What restarts a crashed replica?"}
        values = client.runs.wait(thread["thread_id"], "research", input=question, context={"max_iterations": 1})
        assert values["status"] == "answered" and values["citations"], values
        with pytest.raises(Exception, match="no knob max_iteration"):  # refused when the run is created
            client.runs.create(thread["thread_id"], "research", input=question, context={"max_iteration": 1})
        assert client.threads.get(thread["thread_id"])["status"] == "idle"
        # the deployed graph evaluated through the server: the same metrics as in-process, no model started here
        dataset = tmp_path / "one.jsonl"
        dataset.write_text(json.dumps({"id": "q1", **question, "reference": "The fleet supervisor restarts it."}))
        evaluated = run_agentstack(
            "eval", "run", str(dataset), "--assistant", url, "--set", "max_iterations=1", "--judge", "none",
            "--name", "served", env=env | {"AGENTSTACK_FLEET": str(tmp_path / "no-such-fleet.yaml")},
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
        assert "token_f1" in evaluated.stdout and "0 failed run(s)" in evaluated.stdout
        assert "models:" not in evaluated.stdout  # nothing started on this side
        shown = run_agentstack("eval", "show", "served", env=env)
        assert f'"assistant": "{url}"' in shown.stdout
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:  # a failed check: the server must not outlive the test (nor hang it)
            server.kill()
            server.communicate()
    assert server.returncode == 0, out + err
    assert "agent server: research, team, approval at" in out and "in each of 2 worker processes" in out, out
    assert "agent server: stopped" in out
    assert_quiet(err)
