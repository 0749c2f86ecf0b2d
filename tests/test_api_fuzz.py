"""Schemathesis fuzzes every operation of `/openapi.json` against a real `agentstack api` with two worker
processes (a user's graph over `--config`, on a real Postgres; any request may reach either): no answer is a
5xx, and every 4xx is JSON naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from agentstack._net import free_port
from cli_helpers import clean_env, wait_until_answering

AGENTSTACK = str(Path(sys.executable).with_name("agentstack"))
GRAPH = """
    import operator
    from typing import Annotated

    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt
    from typing_extensions import TypedDict


    class State(TypedDict):
        steps: Annotated[list[str], operator.add]


    def ask(state):
        return {"steps": [f"human said {interrupt('go on?')}"]}


    builder = StateGraph(State)
    builder.add_node("first", lambda state: {"steps": ["first"]})
    builder.add_node("ask", ask)
    builder.add_edge(START, "first")
    builder.add_edge("first", "ask")
    builder.add_edge("ask", END)
    graph = builder.compile()
"""


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory, agentstack_postgres_server: object) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzzed")
    (root / "agent.py").write_text(textwrap.dedent(GRAPH))
    (root / "langgraph.json").write_text(json.dumps({"graphs": {"asking": "./agent.py:graph"}}))
    database = agentstack_postgres_server.create_database()  # type: ignore[attr-defined]
    port = free_port()
    env = clean_env() | {"AGENTSTACK_HOME": str(root / "home"), "AGENTSTACK_POSTGRES_URL": database}
    log = (root / "server.log").open("w")  # a file, not a pipe nobody reads: a full pipe would stall the server
    server = subprocess.Popen(
        [AGENTSTACK, "api", "--config", str(root / "langgraph.json"), "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(server, f"{url}/ok", timeout=60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        agentstack_postgres_server.drop_database(database)  # type: ignore[attr-defined]


@pytest.mark.slow  # about two thousand requests, half of them wrong on purpose
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_is_a_server_error_and_every_refusal_names_its_problem(api_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            said = f"{case.method} {case.formatted_path} {case.body!r}: {response.status_code} {response.text[:300]}"
            assert response.status_code < 500, said
            if response.status_code >= 400:
                detail = response.json().get("detail")
                assert isinstance(detail, str) and detail.strip(), said

        try:
            fuzz()
        except Unsatisfiable:  # negative mode, and nothing to get wrong (no parameter, no body): nothing to try
            assert mode is GenerationMode.NEGATIVE
        except AssertionError as exc:  # every operation is tried; all failures are reported together
            failures.append(str(exc).splitlines()[0])
    assert not failures, "\n".join(failures)
