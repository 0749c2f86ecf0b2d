"""The Milvus collection behind hybrid retrieval: one schema for Milvus Lite, a server or a cluster.

Fields: `text` (returned to callers), `bm25_text` (the stemmed copy, analyzer on, feeding Milvus's
built-in BM25 function into `sparse`), `dense` (normalised embeddings, cosine, AUTOINDEX), `metadata` (JSON,
filterable), and bookkeeping for re-ingestion (`doc_id`, `fingerprint`, `kind`, `parent_id`).
Parents (the context of leaves, never searched) live in a twin collection `<name>_parents` with the
same schema and the mean of their leaves' vectors: expansion costs no extra embedding, and the searched
collection holds only searchable rows (Milvus Lite's per-search work grows with every row it holds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from agentstack._optional import require
from agentstack.errors import ConfigError, RetrievalError
from agentstack.rag._bm25_text import bm25_text
from agentstack.rag._types import Chunk

_log = logging.getLogger(__name__)

__all__ = ["LegHit", "MilvusIndex", "filter_expression", "is_lite_file", "shared_milvus_lite"]

FilterValue = str | int | float | bool | Sequence[str | int | float]
TEXT_LIMIT = 65_535  # Milvus VARCHAR maximum (bytes)
_META_ID = "agentstack-index-meta"
# How long a Milvus Lite server this process starts may take to listen (`_lite_server`); about a second here.
_LITE_START_S = 60.0
_FIELDS = ["id", "doc_id", "source", "kind", "parent_id", "position", "text", "metadata", "fingerprint"]


class LegHit:
    """One candidate from one leg (dense or BM25) of a search: ids and score only, texts are fetched later."""

    __slots__ = ("id", "parent_id", "score")

    def __init__(self, id: str, parent_id: str | None, score: float) -> None:
        self.id = id
        self.parent_id = parent_id
        self.score = score


def filter_expression(filters: Mapping[str, FilterValue] | None) -> str:
    """Metadata filters as a Milvus boolean expression: equality, or membership for a list value."""
    if not filters:
        return 'kind == "leaf"'
    clauses = ['kind == "leaf"']
    for key, value in filters.items():
        if not key.replace("_", "").isalnum():
            raise RetrievalError(f"filter key {key!r} is not a plain name", fix="use letters, digits and _ only")
        field = f'metadata["{key}"]'
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                raise RetrievalError(f"filter {key!r} is an empty list", fix="give at least one allowed value")
            clauses.append(f"{field} in {json.dumps(list(value))}")
        elif isinstance(value, str | int | float | bool):
            clauses.append(f"{field} == {json.dumps(value)}")
        else:
            raise RetrievalError(
                f"filter {key!r} has a value of type {type(value).__name__}",
                fix="filter on a string, number or bool, or a list of them (any of)",
            )
    return " and ".join(clauses)


class MilvusIndex:
    """A hybrid (dense + BM25) Milvus collection; `uri` is a `.db` path (Milvus Lite) or a server URL."""

    def __init__(self, client: Any, collection: str, *, dimension: int, embedder: str, uri: str, token: str) -> None:
        self._client = client
        self._uri, self._token = uri, token
        self.collection = collection
        self.parents = f"{collection}_parents"
        self.dimension = dimension
        self.embedder = embedder

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """pymilvus's and gRPC's errors, as a `RetrievalError` naming Milvus, what it was doing, and the fix."""
        try:
            yield
        except Exception as exc:
            if not _is_milvus_error(exc):
                raise
            lite = is_lite_file(self._uri)
            where = f"Milvus Lite ({self._uri})" if lite else f"the Milvus server at {self._uri}"
            reason = getattr(exc, "message", None) or str(exc)
            raise RetrievalError(
                f"{where} failed while {doing}: {reason}",
                fix="open the index again: Milvus Lite's server process stopped, or another process holds the "
                "file's lock (one process at a time)"
                if lite
                else "check that the Milvus server runs and is reachable, and AGENTSTACK_MILVUS_URI / _TOKEN",
            ) from exc

    @classmethod
    async def open(
        cls, uri: str | Path, *, dimension: int, embedder: str, collection: str = "agentstack", token: str = ""
    ) -> MilvusIndex:
        """Connect, create the collection if missing, and check an existing one matches the embedder."""
        index = await cls._connect(uri, collection=collection, token=token)
        try:
            await index._prepare(dimension=dimension, embedder=embedder)
        except BaseException:
            await index.aclose()
            raise
        return index

    @classmethod
    async def _connect(cls, uri: str | Path, *, collection: str, token: str) -> MilvusIndex:
        """Start Milvus Lite or reach the server; `_prepare` then opens the collection (`open` does both).

        Apart so that `open_retrieval` reaches Milvus before the embedder loads: a wrong URI fails at once.
        """
        _grpc_forks_plainly()
        pymilvus = require("pymilvus", extra="local", feature="the hybrid index")
        uri = str(uri)
        if is_lite_file(uri):
            await _lite_server(uri)  # pymilvus would start it too, but not wait until it listens
        index = cls(None, collection, dimension=0, embedder="", uri=uri, token=token)
        with index._failures("connecting"):
            index._client = client = pymilvus.AsyncMilvusClient(uri=uri, token=token)
        try:
            with index._failures(f"opening the collection {collection!r}"):
                await client.has_collection(collection)
        except BaseException:
            await client.close()
            raise
        return index

    async def _prepare(self, *, dimension: int, embedder: str) -> None:
        self.dimension, self.embedder = dimension, embedder
        client, collection = self._client, self.collection
        with self._failures(f"opening the collection {collection!r}"):
            exists = await client.has_collection(collection)
            if not exists or not await client.has_collection(self.parents):
                await self._create()
            for name in (collection, self.parents):
                await client.load_collection(name)
            if exists:
                await self._check_existing()

    async def _create(self) -> None:
        if not await self._client.has_collection(self.collection):
            await self._client.create_collection(self.collection, schema=self._schema(), index_params=_index_params())
            # Which embedder made the vectors: a row, since Milvus Lite keeps no collection description.
            meta = Chunk(_META_ID, "", "", "", "meta", 0, None, {"embedder": self.embedder})
            await self._client.insert(self.collection, [_row(meta, "", [1.0] + [0.0] * (self.dimension - 1), "")])
        if not await self._client.has_collection(self.parents):
            await self._client.create_collection(self.parents, schema=self._schema(), index_params=_index_params())

    def _schema(self) -> Any:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, description="agentstack hybrid index")
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field("fingerprint", DataType.VARCHAR, max_length=64)
        schema.add_field("kind", DataType.VARCHAR, max_length=8)
        schema.add_field("parent_id", DataType.VARCHAR, max_length=64)
        schema.add_field("position", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_LIMIT)
        schema.add_field(
            "bm25_text",
            DataType.VARCHAR,
            max_length=TEXT_LIMIT,
            enable_analyzer=True,
            analyzer_params={"tokenizer": "standard"},
        )
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dimension)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="bm25",
                function_type=FunctionType.BM25,
                input_field_names=["bm25_text"],
                output_field_names=["sparse"],
            )
        )
        return schema

    async def _check_existing(self) -> None:
        info = await self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in info["fields"]}
        if "dense" not in fields or "bm25_text" not in fields:
            raise ConfigError(
                f"the Milvus collection {self.collection!r} exists but was not made by agentstack",
                fix="choose another collection name, or drop that collection",
            )
        dim = int(fields["dense"]["params"]["dim"])
        rows = await self._client.get(self.collection, ids=[_META_ID], output_fields=["metadata"])
        made_with = str(rows[0]["metadata"].get("embedder", "")) if rows else ""
        if dim != self.dimension:
            raise ConfigError(
                f"the collection {self.collection!r} holds {dim}-dimensional vectors (embedder {made_with or '?'}), "
                f"but the embedder {self.embedder} makes {self.dimension}-dimensional ones",
                fix="use the embedder the collection was built with, or another collection name "
                "(then re-ingest into it)",
            )
        if made_with != self.embedder:
            raise ConfigError(
                f"the collection {self.collection!r} was built with the embedder {made_with or '?'}, "
                f"not {self.embedder}: their vectors are not comparable",
                fix=f"use the embedder {made_with or 'it was built with'}, or another collection name "
                "(then re-ingest into it)",
            )

    # -- writing ----------------------------------------------------------------------------------

    async def fingerprints(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc_id -> fingerprint of the version indexed now, for those of `doc_ids` in the index."""
        with self._failures("reading document fingerprints"):
            found: dict[str, str] = {}
            for start in range(0, len(doc_ids), 500):
                part = json.dumps(list(doc_ids[start : start + 500]))
                rows = await self._client.query(
                    self.collection,
                    filter=f'doc_id in {part} and kind == "leaf" and position == 0',  # one row per document
                    output_fields=["doc_id", "fingerprint"],
                )
                found.update((row["doc_id"], row["fingerprint"]) for row in rows)
            return found

    async def insert(self, chunks: Sequence[tuple[Chunk, str, Sequence[float], str]]) -> None:
        """Write (chunk, its document's fingerprint, vector, text for BM25 or "" to keep it out of BM25) rows."""
        with self._failures("inserting chunks"):
            for name, kinds in ((self.collection, {"leaf"}), (self.parents, {"parent"})):
                rows = [
                    _row(c, fingerprint, vector, bm25) for c, fingerprint, vector, bm25 in chunks if c.kind in kinds
                ]
                for start in range(0, len(rows), 1000):
                    await self._client.insert(name, rows[start : start + 1000])

    async def delete_stale(self, doc_id: str, fingerprint: str) -> None:
        """Remove the chunks of a document's other versions (call after inserting the new one)."""
        with self._failures("deleting old chunks"):
            for name in (self.collection, self.parents):
                await self._client.delete(name, filter=f'doc_id == "{doc_id}" and fingerprint != "{fingerprint}"')

    async def delete_document(self, doc_id: str) -> None:
        with self._failures("deleting a document"):
            for name in (self.collection, self.parents):
                await self._client.delete(name, filter=f'doc_id == "{doc_id}"')

    async def flush(self) -> None:
        """Seal what was written into indexed segments: unflushed rows are searched by brute force."""
        with self._failures("flushing"):
            for name in (self.collection, self.parents):
                await self._client.flush(name)

    async def count(self, kind: str = "leaf") -> int:
        with self._failures("counting chunks"):
            name = self.parents if kind == "parent" else self.collection
            rows = await self._client.query(name, filter=f'kind == "{kind}"', output_fields=["count(*)"])
            return int(rows[0]["count(*)"])

    # -- reading ----------------------------------------------------------------------------------

    async def search_dense(self, vector: Sequence[float], *, candidates: int, expression: str) -> list[LegHit]:
        """The `candidates` nearest leaves by cosine similarity."""
        with self._failures("searching by vector"):
            hits = await self._client.search(
                self.collection,
                [list(vector)],
                anns_field="dense",
                limit=candidates,
                filter=expression,
                search_params={"metric_type": "COSINE", "params": {"ef": max(64, candidates)}},
                output_fields=["parent_id"],
            )
            return [LegHit(h["id"], h["entity"]["parent_id"] or None, float(h["distance"])) for h in hits[0]]

    async def search_bm25(self, query: str, *, candidates: int, expression: str) -> list[LegHit]:
        """The `candidates` best leaves by BM25 over the stemmed text."""
        with self._failures("searching by BM25"):
            terms = bm25_text(query)
            if not terms:  # only stop words or punctuation: BM25 has nothing to match
                return []
            hits = await self._client.search(
                self.collection,
                [terms],
                anns_field="sparse",
                limit=candidates,
                filter=expression,
                search_params={"metric_type": "BM25"},
                output_fields=["parent_id"],
            )
            return [LegHit(h["id"], h["entity"]["parent_id"] or None, abs(float(h["distance"]))) for h in hits[0]]

    async def get(self, ids: Sequence[str]) -> dict[str, Chunk]:
        with self._failures("fetching chunks"):
            if not ids:
                return {}
            found: dict[str, Chunk] = {}
            for name in (self.collection, self.parents):
                missing = [i for i in ids if i not in found]
                if not missing:
                    break
                rows = await self._client.get(name, ids=missing, output_fields=_FIELDS)
                found.update((row["id"], _chunk(row)) for row in rows)
            return found

    async def aclose(self) -> None:
        await self._client.close()


def _is_milvus_error(error: Exception) -> bool:
    """pymilvus's own errors and the gRPC errors under them (both modules are loaded once a client exists)."""
    exceptions = sys.modules.get("pymilvus.exceptions")
    grpc = sys.modules.get("grpc")
    return (exceptions is not None and isinstance(error, exceptions.MilvusException)) or (
        grpc is not None and isinstance(error, grpc.RpcError)
    )


def _index_params() -> Any:
    from pymilvus import MilvusClient

    params = MilvusClient.prepare_index_params()
    # AUTOINDEX: HNSW on a Milvus server or cluster, FLAT (exact) on Milvus Lite, which has no HNSW.
    params.add_index("dense", index_type="AUTOINDEX", metric_type="COSINE")
    params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    return params


def is_lite_file(uri: str) -> bool:
    """A Milvus Lite file, whose server this process starts; not an address: a server's URL, or the `unix:`
    socket of a Lite server another process started (`shared_milvus_lite`)."""
    return "://" not in uri and not uri.startswith("unix:")


@asynccontextmanager
async def shared_milvus_lite(path: str) -> AsyncIterator[str]:
    """Start Milvus Lite's server for the file at `path` and yield its address (`unix:<socket>`), a Milvus URI
    that other processes open: a Lite file is one process's (its server locks it), its server is anyone's.
    `agentstack api --workers N` shares one index with its N worker processes this way."""
    uri = await _lite_server(path)  # imports milvus_lite as `_import_milvus_lite` does, quietly
    from milvus_lite.server_manager import server_manager_instance

    try:
        yield uri
    finally:
        await asyncio.to_thread(server_manager_instance.release_server, path)


async def _lite_server(path: str) -> str:
    """This process's Milvus Lite server for the file at `path`, listening: its address (`unix:<socket>`).

    milvus-lite starts a server a file and process, waits half a second, and hands every client its address from
    then on, listening or not, alive or not; pymilvus fails at once on a socket that is not there yet. The first
    `agentstack run` after a test suite failed so ("Fail connecting to server"; its server's log then showed it
    ready only after the process had given up), most likely slow to start while the fleet, the embedder and
    Postgres started beside it, every file cold. Here the socket is waited for, up to `_LITE_START_S`; a server
    that has exited (crashed, killed) is started again once.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _import_milvus_lite()
    from milvus_lite.server_manager import server_manager_instance

    restarted = False
    deadline = time.monotonic() + _LITE_START_S
    while True:
        address = await asyncio.to_thread(server_manager_instance.start_and_get_uri, path)
        if address is None:
            raise RetrievalError(
                f"Milvus Lite could not start on {path}",
                fix="another process holds the file's lock (one process at a time): stop it, or give another "
                "AGENTSTACK_MILVUS_URI",
            )
        if await _listens(address.removeprefix("unix:")):
            return address
        process = _lite_process(path)
        exited = process is not None and process.poll() is not None
        if exited and not restarted:
            _log.warning("Milvus Lite's server for %s had exited (%s); starting it again", path, process.returncode)
            await asyncio.to_thread(server_manager_instance.release_server, path)
            restarted = True
            continue
        if exited or time.monotonic() > deadline:
            await asyncio.to_thread(server_manager_instance.release_server, path)
            what = (
                f"exited twice (status {process.returncode})" if exited else f"did not listen in {_LITE_START_S:.0f} s"
            )
            raise RetrievalError(
                f"Milvus Lite's server for {path} {what}",
                fix="see that the machine is not out of memory or disk and that the file is not damaged, and run again",
            )
        await asyncio.sleep(0.1)


async def _listens(socket_path: str) -> bool:
    try:
        _reader, writer = await asyncio.open_unix_connection(socket_path)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def _lite_process(path: str) -> Any:
    """The `subprocess.Popen` of this process's Milvus Lite server for `path` (milvus-lite's own attributes)."""
    from milvus_lite.server_manager import server_manager_instance

    server = getattr(server_manager_instance, "_servers", {}).get(str(Path(path).absolute().resolve()))
    return getattr(server, "_p", None)


def _grpc_forks_plainly() -> None:
    """Before gRPC loads (pymilvus brings it): no fork handlers. With them, a process that forks while a gRPC call
    is in flight (a Stack opens Postgres and the index at once, and starts model servers meanwhile) gives a
    child that aborts before it can exec (`pg_ctl exit -6` after "Other threads are currently calling into gRPC,
    skipping fork() handlers"). Every process agentstack forks execs at once, the case gRPC documents this
    setting for (grpc/grpc#14055; labgrid#1905 fixed the same abort so)."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


def _import_milvus_lite() -> None:
    """Import Milvus Lite before pymilvus does, without its pkg_resources deprecation warning on every run."""
    _grpc_forks_plainly()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        require("milvus_lite", extra="local", feature="a local index path (Milvus Lite; or give a server URI)")


def _row(chunk: Chunk, fingerprint: str, vector: Sequence[float], searchable: str) -> dict[str, Any]:
    if len(chunk.text.encode()) > TEXT_LIMIT:
        raise RetrievalError(
            f"a chunk of {chunk.source} is {len(chunk.text.encode())} bytes; Milvus stores at most {TEXT_LIMIT}",
            fix="use smaller chunks (parent_tokens)",
        )
    return {
        "id": chunk.id,
        "doc_id": chunk.doc_id,
        "source": chunk.source[:4096],
        "fingerprint": fingerprint,
        "kind": chunk.kind,
        "parent_id": chunk.parent_id or "",
        "position": chunk.position,
        "text": chunk.text,
        "bm25_text": bm25_text(searchable),
        "metadata": chunk.metadata,
        "dense": list(vector),
    }


def _chunk(row: Mapping[str, Any]) -> Chunk:
    return Chunk(
        id=row["id"],
        doc_id=row["doc_id"],
        source=row["source"],
        text=row["text"],
        kind=row["kind"],
        position=int(row["position"]),
        parent_id=row["parent_id"] or None,
        metadata=dict(row["metadata"] or {}),
    )
