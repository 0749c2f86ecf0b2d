"""Shared test setup: the agentstack pytest plugin is loaded through its entry point."""

from __future__ import annotations

from pathlib import Path

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
