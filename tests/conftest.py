"""Shared test setup: the agentstack pytest plugin is loaded through its entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstack.config import Settings

pytest_plugins = ["pytester"]  # tests/test_testing_kit.py runs the plugin in sessions of its own


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """Settings isolated from the developer's own ~/.agentstack and environment."""
    for name in list(__import__("os").environ):
        if name.startswith("AGENTSTACK_") or name == "COHERE_API_KEY":  # Settings reads COHERE_API_KEY too
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGENTSTACK_HOME", str(tmp_path / "home"))
    return Settings.load()


@pytest.fixture(scope="session")
def fleet_home(tmp_path_factory) -> Path:
    """One agentstack home for every fleet test: the GGUF model is assembled into it once."""
    return tmp_path_factory.mktemp("fleet-home")


@pytest.fixture(scope="session")
def embedder(agentstack_embedder):
    """Shorter name for the plugin's session embedder."""
    return agentstack_embedder


@pytest.fixture(scope="session")
def model_gateway(
    fleet_home: Path, tmp_path_factory: pytest.TempPathFactory, agentstack_postgres_server: Any
) -> Iterator[str]:
    """One `agentstack serve` (a CPU Gemma replica) for every end-to-end test of the session, as its /v1 URL:
    what users point AGENTSTACK_LLM_BASE_URL at. The fleet then starts once, not once per CLI run or example."""
    from cli_helpers import serve_gateway
    from fleet_helpers import tiny_spec_file

    spec = tiny_spec_file(tmp_path_factory.mktemp("gateway") / "fleet.yaml", replicas=1)
    database = agentstack_postgres_server.create_database()
    with serve_gateway(spec, home=fleet_home, postgres_url=database) as (_proc, port):
        yield f"http://127.0.0.1:{port}/v1"
