"""One model choice: `Fleet.from_settings` and `FleetSpec.chat_model_name`, shared by serve, ingest --graph and Stack.

Nothing here starts a server: a wrong choice must fail before anything starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from agentstack import Stack
from agentstack.config import Settings
from agentstack.errors import ConfigError
from agentstack.serving import Fleet, FleetSpec, default_fleet_spec

TWO_CHATS = {
    "models": [
        {"name": "embedder", "backend": "llamacpp", "model": "e.gguf", "task": "embed"},
        {"name": "small", "backend": "llamacpp", "model": "s.gguf", "replicas": 2, "parallel": 3},
        {
            "name": "large",
            "backend": "vllm",
            "model": "org/large",
            "memory_gib": 20,
            "lora": [{"name": "large-sql", "path": "/lora/sql"}],
        },
        {"name": "remote", "backend": "external", "urls": ["http://a:1/v1", "http://b:1/v1", "http://c:1/v1"]},
    ]
}


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(TWO_CHATS))
    return path


def test_the_first_chat_model_unless_one_is_named() -> None:
    spec = FleetSpec.from_data(TWO_CHATS)
    assert spec.chat_model_name() == "small"  # the embedder comes first but is no chat model
    assert spec.chat_model_name("large") == "large"
    assert spec.chat_model_name("large-sql") == "large-sql"  # an adapter of a chat model
    with pytest.raises(ConfigError, match=r"'embedder' .* is not a chat model") as info:
        spec.chat_model_name("embedder")
    assert "one of: small, large, large-sql, remote" in str(info.value)
    embed_only = FleetSpec.from_data({"models": [TWO_CHATS["models"][0]]})
    with pytest.raises(ConfigError, match="the fleet spec serves no chat model"):
        embed_only.chat_model_name()


def test_from_settings_honours_llm_model_and_fails_before_starting(
    settings: Settings, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSTACK_FLEET", str(spec_file))
    assert Fleet.from_settings(Settings.load()).chat_model_name() == "small"
    monkeypatch.setenv("AGENTSTACK_LLM_MODEL", "large")
    fleet = Fleet.from_settings(Settings.load())
    assert fleet.chat_model_name() == "large" and fleet.home == settings.home
    monkeypatch.setenv("AGENTSTACK_LLM_MODEL", "nope")
    with pytest.raises(ConfigError, match=r"'nope' \(AGENTSTACK_LLM_MODEL\) is not a chat model of this fleet"):
        Fleet.from_settings(Settings.load())
    # With an external LLM server, AGENTSTACK_LLM_MODEL names that server's model: the fleet ignores it.
    monkeypatch.setenv("AGENTSTACK_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    assert Fleet.from_settings(Settings.load()).chat_model_name() == "small"


def test_an_explicit_spec_path_wins_over_the_setting(settings: Settings, spec_file: Path) -> None:
    assert [m.name for m in Fleet.from_settings(settings).spec.models] == ["gemma-270m"]  # cpu-tiny by default
    configured = settings.model_copy(update={"fleet": default_fleet_spec()})
    assert [m.name for m in Fleet.from_settings(configured).spec.models] == ["gemma-270m"]
    assert [m.name for m in Fleet.from_settings(configured, spec_file).spec.models][1] == "small"


def test_slots_come_from_each_backend() -> None:
    fleet = Fleet(FleetSpec.from_data(TWO_CHATS), home=Path("/nonexistent"))
    assert fleet.slots("small") == 2 * 3  # llama.cpp: replicas x parallel
    assert fleet.slots("large-sql") == 64  # vLLM batches; an adapter counts as its base model
    assert fleet.slots("remote") == 3 * 4  # one replica per URL, the default 4 each


async def test_stack_fails_on_a_wrong_model_before_starting_anything(
    settings: Settings, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSTACK_FLEET", str(spec_file))
    monkeypatch.setenv("AGENTSTACK_LLM_MODEL", "embedder")
    monkeypatch.setenv("AGENTSTACK_POSTGRES_URL", "postgresql://nobody@127.0.0.1:9/none")  # never reached
    with pytest.raises(ConfigError, match=r"'embedder' .* is not a chat model of this fleet"):
        async with Stack.from_settings(Settings.load(), retrieval=False):
            pass


def test_an_external_server_answers_in_the_style_of_the_spec_model_it_names(settings: Settings) -> None:
    """`agentstack serve` elsewhere serves the spec's names: its CPU Gemma still answers extractively."""
    external = settings.model_copy(update={"llm_base_url": "http://127.0.0.1:9/v1", "llm_model": "gemma-270m"})
    assert Stack(external).answer_style == "extractive"
    assert Stack(external.model_copy(update={"llm_model": "my-vllm-model"})).answer_style == "written"
    assert Stack(external.model_copy(update={"answer_style": "written"})).answer_style == "written"


@pytest.mark.slow
@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["ingest", "--graph"]])
def test_serve_and_graph_ingest_choose_the_same_way(command: list[str], spec_file: Path, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENTSTACK_")},
        "AGENTSTACK_HOME": str(tmp_path / "home"),
        "COLUMNS": "200",  # one line per message
        "AGENTSTACK_FLEET": str(spec_file),
        "AGENTSTACK_LLM_MODEL": "nope",
        "AGENTSTACK_MILVUS_URI": str(tmp_path / "milvus.db"),
    }
    document = tmp_path / "nothing.md"
    document.write_text("nothing")
    command = [*command, str(document)] if command[0] == "ingest" else command
    agentstack = Path(sys.executable).with_name("agentstack")
    result = subprocess.run([str(agentstack), *command], env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'nope' (AGENTSTACK_LLM_MODEL) is not a chat model of this fleet" in result.stderr
    assert "small, large, large-sql, remote" in result.stderr


@pytest.mark.allow_model_requests  # a local stand-in, answering "ok"
async def test_the_graphs_model_decodes_greedily(settings: Settings, agentstack_postgres: str) -> None:
    """A server's default samples (llama.cpp's is 0.8): the same question over the same index then got another
    answer each run, and an experiment measured the sampling as much as the change it was run for."""
    from agentstack._net import free_port
    from rag_server import serve

    port = free_port()
    with serve(None, port) as seen:
        model = {"llm_base_url": f"http://127.0.0.1:{port}/v1", "llm_model": "m"}
        external = settings.model_copy(update={"postgres_url": agentstack_postgres, **model})
        async with Stack(external, retrieval=False) as stack:
            assert (await stack.model.ainvoke("hi")).content == "ok"
    assert [request["body"]["temperature"] for request in seen] == [0]


def test_a_judge_url_needs_its_model_name() -> None:
    with pytest.raises(ConfigError, match="judge_base_url needs judge_model") as info:
        Settings.load(judge_base_url="http://127.0.0.1:9/v1")
    assert "AGENTSTACK_JUDGE_MODEL" in info.value.problem
    with pytest.raises(ConfigError, match=r"judge_base_url: .*must be an http"):
        Settings.load(judge_base_url="localhost:8000", judge_model="m")
    assert "judge_api_key=SecretStr('**********')" in repr(Settings.load(judge_api_key="sk-1"))


@pytest.mark.allow_model_requests  # a local stand-in for a larger judge, answering "ok"
async def test_the_judge_is_its_own_server_model_and_needs_no_fleet(
    settings: Settings, agentstack_postgres: str
) -> None:
    """`agentstack eval --judge model` with AGENTSTACK_JUDGE_*: the small model answers, a larger one judges."""
    from agentstack._net import free_port
    from rag_server import serve

    port = free_port()
    judge = {
        "judge_base_url": f"http://127.0.0.1:{port}/v1",
        "judge_model": "big-judge",
        "judge_api_key": SecretStr("sk-j"),
    }
    configured = settings.model_copy(update={"postgres_url": agentstack_postgres, **judge})
    with serve(None, port) as seen:
        async with Stack(configured, models=False, retrieval=False) as stack:  # judging stored answers: no fleet
            model = stack.judge_model()
            assert stack.judge_model() is model  # one client, closed with the stack
            assert (await model.ainvoke("Is this supported?")).content == "ok"
        own = configured.model_copy(update={"judge_base_url": None, "judge_model": None})
        own = own.model_copy(update={"llm_base_url": f"http://127.0.0.1:{port}/v1", "llm_model": "small"})
        async with Stack(own, retrieval=False) as stack:
            assert stack.judge_model() is stack.model  # no judge of its own: the graphs' model judges
    [request] = seen
    assert request["body"]["model"] == "big-judge" and request["body"]["temperature"] == 0
    assert request["auth"] == "Bearer sk-j"


async def test_a_judge_named_in_the_fleet_needs_the_fleet(settings: Settings, agentstack_postgres: str) -> None:
    named = settings.model_copy(update={"postgres_url": agentstack_postgres, "judge_model": "large"})
    async with Stack(named, models=False, retrieval=False) as stack:
        with pytest.raises(ConfigError, match=r"'large' names a model of the fleet, and this stack runs no fleet"):
            stack.judge_model()
    plain = settings.model_copy(update={"postgres_url": agentstack_postgres})
    async with Stack(plain, models=False, retrieval=False) as stack:
        with pytest.raises(ConfigError, match="opened without models"):
            stack.judge_model()  # no judge of its own: the graphs' model, and there is none
