"""StrictSerializer: our own allow-list, checked before anything is imported, in step with LangGraph's.

The first tests are tripwires: they read LangGraph's private lists (only tests may) and
fail, naming the type, when an upstream release changes what it considers safe or how it
writes values, which is when `agentstack.checkpoint._serde` needs a look.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import subprocess
import sys
import uuid
from collections import deque
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Network
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

import ormsgpack
import pytest
from langchain_core.documents import Document
from langchain_core.load import dumps as lc_dumps
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Command, Interrupt, Send

from agentstack.checkpoint import DEFAULT_ALLOWED_TYPES, PoolSaver, StrictSerializer
from agentstack.checkpoint._serde import ALLOWED_METHODS
from agentstack.errors import CheckpointError, UnsafeCheckpointError
from cli_helpers import clean_env


@dataclasses.dataclass
class Finding:
    claim: str
    score: float


def test_default_allowed_types_are_upstreams_safe_types() -> None:
    from langgraph.checkpoint.serde._msgpack import SAFE_MSGPACK_TYPES

    upstream = {(k[0], k[1]) for k in SAFE_MSGPACK_TYPES if len(k) == 2}
    assert not (added := upstream - DEFAULT_ALLOWED_TYPES), f"LangGraph now also considers safe: {sorted(added)}"
    assert not (removed := DEFAULT_ALLOWED_TYPES - upstream), f"LangGraph no longer considers safe: {sorted(removed)}"
    assert all(len(k) == 2 for k in SAFE_MSGPACK_TYPES), "LangGraph's allow-list has a new shape of entry"


def test_allowed_methods_are_upstreams_safe_methods() -> None:
    from langgraph.checkpoint.serde._msgpack import SAFE_MSGPACK_METHODS

    assert set(SAFE_MSGPACK_METHODS) == set(ALLOWED_METHODS), sorted(set(SAFE_MSGPACK_METHODS) ^ ALLOWED_METHODS)


def test_every_msgpack_extension_langgraph_writes_is_one_we_check() -> None:
    codes = {name: getattr(jsonplus, name) for name in dir(jsonplus) if name.startswith("EXT_")}
    assert codes == {
        "EXT_CONSTRUCTOR_SINGLE_ARG": 0,
        "EXT_CONSTRUCTOR_POS_ARGS": 1,
        "EXT_CONSTRUCTOR_KW_ARGS": 2,
        "EXT_METHOD_SINGLE_ARG": 3,
        "EXT_PYDANTIC_V1": 4,
        "EXT_PYDANTIC_V2": 5,
        "EXT_NUMPY_ARRAY": 6,
        "EXT_DELTA_SNAPSHOT": 7,
    }


SAFE_VALUES: list[Any] = [
    dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    dt.date(2026, 1, 2),
    dt.time(3, 4, 5),
    dt.timedelta(days=1, seconds=2),
    dt.timezone(dt.timedelta(hours=2)),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("1.25"),
    {1, 2},
    frozenset({"a"}),
    deque([1, 2]),
    IPv4Address("10.0.0.1"),
    IPv6Network("2001:db8::/32"),
    Path("/tmp/x"),
    ZoneInfo("Europe/Paris"),
    re.compile("a+b", re.IGNORECASE),
    [HumanMessage("q"), AIMessage("a", tool_calls=[{"name": "t", "args": {}, "id": "1"}])],
    ToolMessage("r", tool_call_id="1"),
    Document(page_content="text", metadata={"source": "s"}),
    Send("node", {"arg": [1]}),
    Interrupt(value={"question": "ok?"}, id="i1"),
    Command(resume="yes"),
    {"nested": [{"deeper": (dt.date(2026, 1, 1), uuid.UUID(int=7))}]},
]


@pytest.mark.parametrize("value", SAFE_VALUES, ids=lambda v: type(v).__name__)
def test_safe_values_load_as_stock_langgraph_loads_them(value: Any) -> None:
    stock = JsonPlusSerializer()
    written = StrictSerializer().dumps_typed(value)
    assert written == stock.dumps_typed(value)
    assert StrictSerializer().loads_typed(written) == stock.loads_typed(written)


def _ext(code: int, *parts: Any) -> tuple[str, bytes]:
    return ("msgpack", ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(parts))))


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module that leaves a file behind when it is imported."""
    imported = tmp_path / "imported"
    (tmp_path / "agentstack_canary.py").write_text(
        f"open({str(imported)!r}, 'w').close()\nclass Boom:\n    def __init__(self, *a, **k): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "agentstack_canary", raising=False)
    return imported


@pytest.mark.parametrize(
    "payload",
    [
        _ext(jsonplus.EXT_CONSTRUCTOR_SINGLE_ARG, "agentstack_canary", "Boom", 1),
        _ext(jsonplus.EXT_CONSTRUCTOR_KW_ARGS, "agentstack_canary", "Boom", {"a": 1}),
        _ext(jsonplus.EXT_PYDANTIC_V2, "agentstack_canary", "Boom", {}, "model_validate_json"),
        ("msgpack", ormsgpack.packb({"deep": [ormsgpack.Ext(0, ormsgpack.packb(("agentstack_canary", "Boom", 1)))]})),
        ("json", json.dumps({"lc": 2, "type": "constructor", "id": ["agentstack_canary", "Boom"]}).encode()),
        ("json", json.dumps([{"x": {"lc": 2, "type": "constructor", "id": ["agentstack_canary", "Boom"]}}]).encode()),
    ],
    ids=["single-arg", "kw-args", "pydantic", "nested", "json-lc2", "json-nested"],
)
def test_refused_before_anything_is_imported(payload: tuple[str, bytes], canary: Path) -> None:
    with pytest.raises(UnsafeCheckpointError, match=r"agentstack_canary\.Boom, which is not on") as info:
        StrictSerializer().loads_typed(payload)
    assert "allowed_types=[agentstack_canary.Boom]" in str(info.value)
    assert not canary.exists() and "agentstack_canary" not in sys.modules
    allowed = StrictSerializer([("agentstack_canary", "Boom")]).loads_typed(payload)
    assert canary.exists() and allowed is not None


def test_only_the_allowed_method_calls_load() -> None:
    ok = _ext(jsonplus.EXT_METHOD_SINGLE_ARG, "datetime", "datetime", "2026-01-02T03:04:05", "fromisoformat")
    assert StrictSerializer().loads_typed(ok) == dt.datetime(2026, 1, 2, 3, 4, 5)
    bad = _ext(jsonplus.EXT_METHOD_SINGLE_ARG, "os", "path", "/etc/passwd", "exists")
    with pytest.raises(UnsafeCheckpointError, match=r"os\.path\.exists"):
        StrictSerializer().loads_typed(bad)
    with pytest.raises(UnsafeCheckpointError, match=r"datetime\.datetime\.now"):
        StrictSerializer(allowed_types=[("os", "path")]).loads_typed(
            _ext(jsonplus.EXT_METHOD_SINGLE_ARG, "datetime", "datetime", None, "now")
        )


def test_legacy_langchain_json_loads_messages_by_their_public_ids() -> None:
    payload = ("json", lc_dumps({"messages": [HumanMessage("q"), AIMessage("a")]}).encode())
    assert '"langchain", "schema", "messages", "HumanMessage"' in payload[1].decode()  # an alias, not the module
    assert StrictSerializer().loads_typed(payload) == {"messages": [HumanMessage("q"), AIMessage("a")]}
    prompt = ("json", json.dumps({"lc": 1, "type": "constructor", "id": ["langchain", "prompts", "PromptTemplate"]}))
    with pytest.raises(UnsafeCheckpointError, match="PromptTemplate"):
        StrictSerializer().loads_typed((prompt[0], prompt[1].encode()))


def test_unknown_extensions_and_damaged_values_are_checkpoint_errors() -> None:
    with pytest.raises(CheckpointError, match="msgpack extension 42"):
        StrictSerializer().loads_typed(("msgpack", ormsgpack.packb(ormsgpack.Ext(42, b"\x90"))))
    for damaged in [("msgpack", b"\xc1"), ("msgpack", ormsgpack.packb(ormsgpack.Ext(0, b"\x91\x01"))), ("json", b"{")]:
        with pytest.raises(CheckpointError, match="could not be decoded"):
            StrictSerializer().loads_typed(damaged)


async def test_with_allowlist_gives_a_clone_that_loads_the_graphs_own_types(saver: PoolSaver) -> None:
    payload = JsonPlusSerializer().dumps_typed([Finding("x", 1.0)])
    assert saver.with_allowlist({(Finding.__module__, "Finding")}) is not saver
    clone = saver.with_allowlist({(Finding.__module__, "Finding"), ("datetime", "date")})
    assert clone.conn is saver.conn and clone.serde.loads_typed(payload) == [Finding("x", 1.0)]
    with pytest.raises(UnsafeCheckpointError):
        saver.serde.loads_typed(payload)  # the original stays as strict as it was
    assert saver.with_allowlist({("datetime", "date")}) is saver  # nothing new: no copy


@pytest.mark.slow
def test_a_compiled_graph_allows_its_state_types_in_langgraphs_strict_mode(agentstack_postgres: str) -> None:
    # LangGraph reads LANGGRAPH_STRICT_MSGPACK when it is imported, hence a process of its own.
    code = """
import asyncio, dataclasses, sys
from typing import TypedDict
from langgraph.graph import START, StateGraph
from agentstack.checkpoint import open_saver

@dataclasses.dataclass
class Finding:
    claim: str

class State(TypedDict):
    finding: Finding

async def main():
    async with open_saver(sys.argv[1], pool_size=2) as saver:
        builder = StateGraph(State)
        builder.add_node("find", lambda s: {"finding": Finding("found")})
        builder.add_edge(START, "find")
        graph = builder.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "strict"}}
        await graph.ainvoke({"finding": Finding("start")}, config)
        print((await graph.aget_state(config)).values["finding"])

asyncio.run(main())
"""

    def run(strict: str) -> subprocess.CompletedProcess[str]:
        env = clean_env() | {"LANGGRAPH_STRICT_MSGPACK": strict}
        return subprocess.run(
            [sys.executable, "-c", code, agentstack_postgres], capture_output=True, text=True, env=env, timeout=120
        )

    done = run("true")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Finding(claim='found')"
    # Without LangGraph naming the state types, the same load is refused.
    refused = run("false")
    assert refused.returncode != 0 and "UnsafeCheckpointError" in refused.stderr, refused.stderr


def test_pure_paths_are_not_on_the_list() -> None:
    # A near miss of an allowed type stays refused: the list is exact, not by module.
    payload = _ext(jsonplus.EXT_CONSTRUCTOR_POS_ARGS, "pathlib", "PurePosixPath", ["/x"])
    assert StrictSerializer([PurePosixPath]).loads_typed(payload) == PurePosixPath("/x")
    with pytest.raises(UnsafeCheckpointError, match="PurePosixPath"):
        StrictSerializer().loads_typed(payload)
