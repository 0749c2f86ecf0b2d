"""The backend registry: agentstack's backends come from entry points, and a third party adds one the same way.

The third-party backend (tests/stub_backend.py) is installed through a real `agentstack.backends` entry point
(a dist-info folder on sys.path, found by importlib.metadata) and launches a real server process
(tests/stub_openai_server.py), whose structured-output dialect is not OpenAI's: the fleet launches it,
health-checks it, canaries it and routes to it, and every structured request reaches it in its dialect.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from agentstack._structured import StructuredCall
from agentstack.cli._doctor import _backends
from agentstack.config import Settings
from agentstack.errors import BackendError, ConfigError
from agentstack.serving import (
    BackendContext,
    BackendRegistry,
    Fleet,
    FleetSpec,
    ReplicaState,
    default_registry,
    gateway_app,
)
from agentstack.serving._backends._external import ExternalBackend
from agentstack.serving._canary import run_canary
from agentstack.serving._registry import BUILTIN_BACKENDS
from fleet_helpers import alive
from stub_backend import SERVER, StubBackend, stub_server

ROOT = Path(__file__).parents[1]


class City(BaseModel):
    name: str
    country: str


def install_entry_point(site: Path, name: str, target: str, dist: str = "agentstack-stub-backend") -> None:
    """What `pip install` leaves for a package declaring `[project.entry-points."agentstack.backends"]`."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    with (info / "entry_points.txt").open("a") as f:
        f.write(f"[agentstack.backends]\n{name} = {target}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for dist-info folders; the process-wide registry is read before, so stays clean."""
    assert "stub" not in default_registry()
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def stub_registry(site: Path) -> BackendRegistry:
    install_entry_point(site, "stub", "stub_backend:StubBackend")
    return BackendRegistry.from_entry_points()


def stub_spec(registry: BackendRegistry, **model: object) -> FleetSpec:
    entry = {"name": "stub-chat", "backend": "stub", "model": "stub-weights", **model}
    return FleetSpec.from_data({"models": [entry]}, backends=registry)


def test_pyproject_declares_exactly_the_builtin_backends() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["agentstack.backends"]
    assert declared == dict(BUILTIN_BACKENDS)


def test_the_installed_registry_has_agentstacks_backends() -> None:
    registry = default_registry()
    assert registry.names == ("vllm", "sglang", "llamacpp", "external")
    assert [registry.get(name).name for name in registry.names] == list(registry.names)


def test_an_unknown_backend_is_refused_with_the_known_names() -> None:
    with pytest.raises(ConfigError, match="no model backend is named 'tgi'; known: vllm, sglang, llamacpp, external"):
        default_registry().get("tgi")
    with pytest.raises(ConfigError, match=r"no backend named 'stub' is installed.*agentstack\.backends"):
        FleetSpec.from_data({"models": [{"name": "x", "backend": "stub", "model": "m"}]})


def test_a_third_party_backend_checks_its_own_spec_rules(stub_registry: BackendRegistry) -> None:
    assert stub_registry.names == ("vllm", "sglang", "llamacpp", "external", "stub")
    assert stub_registry.get("stub") is StubBackend
    with pytest.raises(ConfigError) as info:
        stub_spec(stub_registry, threads=2, max_context=4096)
    assert "models[0] (stub-chat): max_context: backend stub does not take it; remove max_context" in str(info.value)
    assert "threads: backend stub does not take it; remove threads" in str(info.value)
    assert stub_spec(stub_registry, replicas=3, env={"A": "1"}).models[0].gpus == 0


def test_broken_and_conflicting_entry_points_are_named(site: Path) -> None:
    install_entry_point(site, "broken", "no_such_module_anywhere:Backend", dist="broken-backend")
    install_entry_point(site, "renamed", "stub_backend:StubBackend", dist="renamed-backend")
    registry = BackendRegistry.from_entry_points()
    with pytest.raises(ConfigError, match=r"'broken' \(no_such_module_anywhere:Backend\) cannot be loaded"):
        registry.get("broken")
    with pytest.raises(ConfigError, match="registered as 'renamed' calls itself 'stub'"):
        registry.get("renamed")
    assert registry.get("llamacpp").name == "llamacpp"  # the others still load
    install_entry_point(site, "vllm", "stub_backend:StubBackend", dist="impostor")
    with pytest.raises(ConfigError, match=r"two packages declare the model backend .vllm.: agentstack .* and impostor"):
        BackendRegistry.from_entry_points()


@pytest.mark.allow_model_requests  # the canary asks the stub server through ChatOpenAI
async def test_a_third_party_backend_is_launched_canaried_scraped_and_routed(
    stub_registry: BackendRegistry, tmp_path: Path
) -> None:
    spec = stub_spec(stub_registry, replicas=2)
    async with Fleet(spec, home=tmp_path / "home", scrape_interval_s=None) as fleet:
        pids = [r.pid for r in fleet.replicas]
        assert [r.state for r in fleet.replicas] == [ReplicaState.READY] * 2  # healthy, and passed the canary
        assert all(pid is not None and alive(pid) for pid in pids)
        llm = fleet.chat_model(max_tokens=16)  # the fleet's only chat model
        # The stub returns JSON only when asked in its dialect (guided_json): the router translated the request.
        city, tokens = await StructuredCall(llm, City).ask([HumanMessage("Name a city.")], ref="the test")
        assert city == City(name="stub", country="stub") and tokens > 0
        stats = await fleet.scrape_backends()
        assert set(stats) == set(fleet.replicas)
        assert sum(s.prompt_tokens for s in stats.values()) > 0  # the canaries' and ours, in the stub's own names
        assert sum(s.generated_tokens for s in stats.values()) > 0
        assert fleet.slots("stub-chat") == 4  # 2 replicas x the backend's 2 slots
    assert llm.http_async_client.is_closed and llm.http_client.is_closed  # closed with the fleet
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids if pid is not None):
        assert time.monotonic() < deadline, "a stub server outlived its fleet"
        await asyncio.sleep(0.05)


@pytest.mark.allow_model_requests  # the canary asks the stub server through ChatOpenAI
async def test_the_canary_fails_cleanly_when_its_server_is_killed_under_it(
    stub_registry: BackendRegistry, tmp_path: Path
) -> None:
    spec = stub_spec(stub_registry).models[0]
    with stub_server("--slow-s", "30") as (proc, url):
        async with httpx.AsyncHTTPTransport() as transport:
            canary = asyncio.create_task(run_canary(transport, url, spec, StubBackend(BackendContext(tmp_path))))
            async with httpx.AsyncClient() as probe:  # wait until the stub is holding the canary's request
                while "stub_requests_running 1" not in (await probe.get(f"{url}/metrics")).text:
                    assert not canary.done()
                    await asyncio.sleep(0.05)
            proc.kill()
            with pytest.raises(
                BackendError, match=r"model 'stub-chat' at http://127\.0\.0\.1:\d+ failed the startup canary"
            ):
                await canary


@pytest.mark.allow_model_requests  # the canary asks the stub server through ChatOpenAI
async def test_odd_replies_fail_the_canary_as_backend_errors(stub_registry: BackendRegistry, tmp_path: Path) -> None:
    backend = StubBackend(BackendContext(tmp_path))
    chat, embed, rerank = (stub_spec(stub_registry, task=task).models[0] for task in ("chat", "embed", "rerank"))
    with stub_server("--odd") as (_, url):
        async with httpx.AsyncHTTPTransport() as transport:
            with pytest.raises(BackendError, match="not an OpenAI chat completion"):
                await run_canary(transport, url, chat, backend)
            with pytest.raises(BackendError, match=r"unexpected shape .*embedding.*Field required"):
                await run_canary(transport, url, embed, backend)
            with pytest.raises(BackendError, match="a body that is not JSON: 'rerank: internal hiccup'"):
                await run_canary(transport, url, rerank, backend)


@pytest.mark.allow_model_requests  # the canary asks the stub server through ChatOpenAI
async def test_a_reply_cut_at_the_token_limit_is_told_apart_by_its_shape(
    stub_registry: BackendRegistry, tmp_path: Path
) -> None:
    """Prose into the limit means the schema was ignored; a JSON object cut short means the model never finished."""
    context = BackendContext(tmp_path)
    stub = stub_spec(stub_registry).models[0]
    external = FleetSpec.from_data({"models": [{"name": "stub-chat", "backend": "external", "urls": ["http://x/v1"]}]})
    with stub_server("--ramble") as (_, url):
        async with httpx.AsyncHTTPTransport() as transport:
            with pytest.raises(BackendError, match="ignored the JSON schema of a structured-output request"):
                await run_canary(transport, url, external.models[0], ExternalBackend(context))
            with pytest.raises(BackendError, match="did not finish the canary's small structured reply"):
                await run_canary(transport, url, stub, StubBackend(context))


@pytest.mark.allow_model_requests  # the canary asks the stub server through ChatOpenAI
async def test_an_external_server_that_ignores_the_schema_fails_its_canary(tmp_path: Path) -> None:
    """The stub honours only guided_json; as an `external` model it is asked in OpenAI's response_format."""
    with stub_server() as (proc, url):
        spec = FleetSpec.from_data({"models": [{"name": "stub-chat", "backend": "external", "urls": [f"{url}/v1"]}]})
        with pytest.raises(BackendError, match="ignored the JSON schema of a structured-output request"):
            await Fleet(spec, home=tmp_path).start()
        unchecked = FleetSpec.from_data({**spec.model_dump(mode="json", exclude_defaults=True), "canary": False})
        async with Fleet(unchecked, home=tmp_path) as fleet, fleet.http_client() as client:
            gateway = httpx.AsyncClient(transport=httpx.ASGITransport(gateway_app(fleet)), base_url="http://gw")
            body = {"model": "stub-chat", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
            assert (await gateway.post("/v1/chat/completions", json=body)).status_code == 200
            proc.kill()
            proc.wait()
            with pytest.raises(httpx.ConnectError, match="every replica of 'stub-chat' failed"):
                await client.post("/v1/chat/completions", json=body)
            failed = await gateway.post("/v1/chat/completions", json=body)  # an OpenAI-shaped error, no traceback
            assert failed.status_code == 502 and "every replica" in failed.json()["error"]["message"]
            await gateway.aclose()
    with pytest.raises(BackendError, match=r"external model 'stub-chat' at http://127\.0\.0\.1:\d+ is not answering"):
        await Fleet(spec, home=tmp_path).start()


def test_doctor_asks_every_registered_backend(stub_registry: BackendRegistry, settings: Settings) -> None:
    check = _backends(settings, stub_registry)
    assert check.ok and f"stub ({SERVER})" in check.detail  # the third party's own detection
    assert "llama.cpp (" in check.detail  # built next to this Python
    assert "vLLM" not in check.detail and "SGLang" not in check.detail  # not installed here


def test_doctor_names_each_missing_backends_install_hint(settings: Settings, tmp_path: Path) -> None:
    nothing = BackendRegistry({"llamacpp": BUILTIN_BACKENDS["llamacpp"], "vllm": BUILTIN_BACKENDS["vllm"]})
    missing = settings.model_copy(update={"llama_server": tmp_path / "no-llama-server"})
    check = _backends(missing, nothing)
    assert not check.ok and check.fix is not None
    assert "llamacpp: run `agentstack build-llama-server`" in check.fix
    assert "vllm: pip install 'agentstack[gpu]'" in check.fix
