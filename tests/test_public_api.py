"""The public surface is deliberate: exactly these names, each importable and documented."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

import agentstack

EXPECTED = {
    "agentstack": {
        "AgentStackError",
        "BackendError",
        "CheckpointError",
        "ConfigError",
        "GpuInfo",
        "GraphInputError",
        "LocalPostgres",
        "MissingDependencyError",
        "PoolSaver",
        "PostgresServerError",
        "PruneResult",
        "RetrievalError",
        "Settings",
        "Stack",
        "StrictSerializer",
        "ThreadSummary",
        "UnsafeCheckpointError",
        "UserError",
        "delete_thread",
        "gpu_inventory",
        "list_threads",
        "open_saver",
        "prune_thread",
    },
    "agentstack.api": {"create_app", "sse_app", "sse_events"},
    "agentstack.graphs": {
        "BUILTIN_GRAPHS",
        "Analysis",
        "ApprovalContext",
        "ApprovalPolicy",
        "ApprovalState",
        "Citation",
        "Decision",
        "Evidence",
        "FinalAnswer",
        "GraphEntry",
        "GraphParts",
        "GraphRegistry",
        "Plan",
        "ResearchContext",
        "ResearchInput",
        "ResearchState",
        "ResultView",
        "SandboxResult",
        "SearchFailure",
        "StreamEvent",
        "TeamContext",
        "TeamInput",
        "TeamState",
        "ToolDecision",
        "WorkItem",
        "build_approval_graph",
        "build_research_graph",
        "build_team_graph",
        "python_tool",
        "read_knobs",
        "run_python",
        "search_tool",
        "stream_run",
        "workspace_tools",
    },
    "agentstack.prompts": {
        "Prompt",
        "PromptLibrary",
        "default_prompts_dir",
    },
    "agentstack.checkpoint": {
        "DEFAULT_ALLOWED_TYPES",
        "LocalPostgres",
        "PoolSaver",
        "PruneResult",
        "StrictSerializer",
        "ThreadSummary",
        "delete_thread",
        "list_threads",
        "open_pool",
        "open_saver",
        "prune_thread",
    },
    "agentstack.observability": {"Metrics", "Observability", "RunObserver", "Tracing"},
    "agentstack.safety": {"ApiKey", "Authenticator", "Caller", "Door", "Guard", "KeyStore", "NewKey"},
    "agentstack.eval": {
        "AnswerRelevancy",
        "CitationValidity",
        "CitesGold",
        "Comparison",
        "Context",
        "ContextPrecision",
        "ContextRecall",
        "Dataset",
        "ExactMatch",
        "Example",
        "ExperimentResult",
        "ExperimentStore",
        "Faithfulness",
        "GraphTarget",
        "HitRate",
        "ItemResult",
        "Judge",
        "JudgedMetric",
        "MRR",
        "Metric",
        "MetricSummary",
        "NDCG",
        "Outcome",
        "Precision",
        "Preference",
        "Recall",
        "Rubric",
        "Sample",
        "Score",
        "Target",
        "TokenF1",
        "compare",
        "default_metrics",
        "metric_from_name",
        "prefer",
        "run_experiment",
    },
    "agentstack.testing": {
        "HashingEmbedder",
        "InMemoryRetriever",
        "ModelRequestBlockedError",
        "OtlpReceiver",
        "ReceivedSpan",
        "ResumeReport",
        "ScriptExhaustedError",
        "ScriptedChatModel",
        "TestPostgres",
        "assert_quality",
        "check_resumable",
        "schema_model",
    },
    "agentstack.serving": {
        "THREAD_HEADER",
        "Backend",
        "BackendContext",
        "BackendRegistry",
        "BackendStats",
        "Fleet",
        "FleetSpec",
        "GpuInfo",
        "LaunchCommand",
        "LoraAdapter",
        "MetricNames",
        "ModelSpec",
        "Placement",
        "Prepared",
        "Replica",
        "ReplicaState",
        "Router",
        "StructuredDialect",
        "default_fleet_spec",
        "default_registry",
        "gateway_app",
        "gateway_server",
        "gpu_inventory",
    },
    "agentstack.rag": {
        "Chunk",
        "Chunker",
        "CohereReranker",
        "Document",
        "Embedder",
        "Extraction",
        "GraphExtractor",
        "GraphIngestor",
        "GraphResult",
        "GraphRetriever",
        "GraphStore",
        "HttpReranker",
        "HybridRetriever",
        "IngestReport",
        "Ingestor",
        "KnowledgeGraph",
        "LangChainRetriever",
        "LocalEmbedder",
        "MilvusIndex",
        "OpenAIEmbedder",
        "ParentChildChunker",
        "Reranker",
        "Retrieval",
        "RetrievalResult",
        "ScoredChunk",
        "SemanticChunker",
        "llama_index_retriever",
        "open_graph_store",
        "open_knowledge_graph",
        "open_retrieval",
        "retrieval_tool",
    },
}


@pytest.mark.parametrize("module_name", sorted(EXPECTED))
def test_exports(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPECTED[module_name]
    for name in module.__all__:
        obj = getattr(module, name)
        if callable(obj):
            assert obj.__doc__, f"{module_name}.{name} has no docstring"


def test_errors_form_one_tree_and_carry_their_fix() -> None:
    for name in ("ConfigError", "MissingDependencyError", "PostgresServerError", "CheckpointError", "BackendError"):
        assert issubclass(getattr(agentstack, name), agentstack.AgentStackError)
    assert issubclass(agentstack.ConfigError, agentstack.UserError)
    error = agentstack.ConfigError("port is taken", fix="pick another")
    assert str(error) == "port is taken\n  fix: pick another"


def test_settings_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTACK_POSTGRES_PORT", "99999")
    with pytest.raises(agentstack.ConfigError, match="postgres_port"):
        agentstack.Settings.load()
    monkeypatch.setenv("AGENTSTACK_POSTGRES_PORT", "0")
    monkeypatch.setenv("AGENTSTACK_POSTGRES_URL", "mysql://x")
    with pytest.raises(agentstack.ConfigError, match="postgres_url"):
        agentstack.Settings.load()


def test_settings_reject_unknown_keys_in_toml(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "agentstack.toml").write_text('home = "/tmp/x"\npostgres_prot = 5\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(agentstack.ConfigError, match="postgres_prot"):
        agentstack.Settings.load()


def test_every_setting_is_documented() -> None:
    """docs/configuration.md is the settings' reference: a field added without a line there is a setting users
    cannot find (the page names each by its environment variable)."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [name for name in agentstack.Settings.model_fields if f"AGENTSTACK_{name.upper()}" not in page]
    assert not missing, f"add these to docs/configuration.md: {missing}"


def loaded_by(package: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with `prefixes` that importing every module of `package` loads (a fresh process)."""
    probe = (
        f"import importlib, pkgutil, sys, {package} as p\n"
        f"for m in pkgutil.iter_modules(p.__path__): importlib.import_module('{package}.' + m.name)\n"
        f"print(sorted(k for k in sys.modules if k.startswith({prefixes!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(ast.literal_eval(done.stdout))  # a printed list of module names


def test_the_graphs_layer_serves_nothing() -> None:
    """Graphs stream; the application layer (agentstack.api) puts them on the wire: no web framework below it."""
    assert loaded_by("agentstack.graphs", ("starlette", "uvicorn", "agentstack.api")) == []


def test_the_safety_layer_knows_no_server() -> None:
    """Keys and who is calling are cross-cutting: both servers use them, and they import neither."""
    above = ("agentstack.api", "agentstack.serving", "agentstack.graphs", "agentstack.cli")
    assert loaded_by("agentstack.safety", above) == []


def test_the_observability_layer_knows_no_server_and_no_graph() -> None:
    """Traces, metrics, usage and logs are cross-cutting: the servers and the graphs pass them in."""
    above = ("agentstack.api", "agentstack.serving", "agentstack.graphs", "agentstack.cli", "agentstack.rag")
    assert loaded_by("agentstack.observability", above) == []
