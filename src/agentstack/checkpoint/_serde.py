"""Strict checkpoint deserialization: only allow-listed types come back to life.

LangGraph's default serializer imports and calls whatever module/name a checkpoint names
(CVE-2026-28277): anyone who can write to the checkpoint tables can run code in every
process that loads a checkpoint. Its own strict mode is not strict enough for us either:
a blocked type silently comes back as a plain dict or list, and a graph then runs on with
state that is quietly wrong. `StrictSerializer` refuses instead, with an error that names
the type and the one-line way to allow it.

It is built on LangGraph's public serializer interface only: a payload is first walked
without constructing anything (every msgpack extension and every legacy-JSON constructor
is checked against the allow-list), and only then decoded by a public `JsonPlusSerializer`
given the same allow-list through its constructor. Writing is `JsonPlusSerializer`'s, so
stock LangGraph reads what we write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import ormsgpack
from langchain_core.load.load import ALL_SERIALIZABLE_MAPPINGS
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_DELTA_SNAPSHOT,
    EXT_METHOD_SINGLE_ARG,
    EXT_NUMPY_ARRAY,
    EXT_PYDANTIC_V1,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)

from agentstack.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["ALLOWED_METHODS", "DEFAULT_ALLOWED_TYPES", "StrictSerializer", "type_key"]

TypeKey = tuple[str, str]

#: Types that load without being allowed: values, not behaviour. The same list as
#: LangGraph's `SAFE_MSGPACK_TYPES` when this was written (tests/test_serde_allowlist.py
#: fails, naming the type, when upstream's list changes).
DEFAULT_ALLOWED_TYPES: frozenset[TypeKey] = frozenset(
    {
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("uuid", "UUID"),
        ("decimal", "Decimal"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("collections", "deque"),
        ("ipaddress", "IPv4Address"),
        ("ipaddress", "IPv4Interface"),
        ("ipaddress", "IPv4Network"),
        ("ipaddress", "IPv6Address"),
        ("ipaddress", "IPv6Interface"),
        ("ipaddress", "IPv6Network"),
        ("pathlib", "Path"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib._local", "Path"),  # where Python 3.13 defines them
        ("pathlib._local", "PosixPath"),
        ("pathlib._local", "WindowsPath"),
        ("zoneinfo", "ZoneInfo"),
        ("re", "compile"),
        ("langchain_core.messages.base", "BaseMessage"),
        ("langchain_core.messages.base", "BaseMessageChunk"),
        ("langchain_core.messages.human", "HumanMessage"),
        ("langchain_core.messages.human", "HumanMessageChunk"),
        ("langchain_core.messages.ai", "AIMessage"),
        ("langchain_core.messages.ai", "AIMessageChunk"),
        ("langchain_core.messages.system", "SystemMessage"),
        ("langchain_core.messages.system", "SystemMessageChunk"),
        ("langchain_core.messages.chat", "ChatMessage"),
        ("langchain_core.messages.chat", "ChatMessageChunk"),
        ("langchain_core.messages.tool", "ToolMessage"),
        ("langchain_core.messages.tool", "ToolMessageChunk"),
        ("langchain_core.messages.function", "FunctionMessage"),
        ("langchain_core.messages.function", "FunctionMessageChunk"),
        ("langchain_core.messages.modifier", "RemoveMessage"),
        ("langchain_core.documents.base", "Document"),
        ("langgraph.types", "Send"),
        ("langgraph.types", "TimeoutPolicy"),
        ("langgraph.types", "Interrupt"),
        ("langgraph.types", "Command"),
        ("langgraph.types", "StateSnapshot"),
        ("langgraph.types", "PregelTask"),
        ("langgraph.types", "Overwrite"),
        ("langgraph.store.base", "Item"),
        ("langgraph.store.base", "GetOp"),
    }
)

#: The only `(module, class, method)` calls a checkpoint may ask for (LangGraph's
#: `SAFE_MSGPACK_METHODS`): how `JsonPlusSerializer` writes a datetime.
ALLOWED_METHODS: frozenset[tuple[str, str, str]] = frozenset({("datetime", "datetime", "fromisoformat")})

# Extensions whose payload is `(module, name, args...)`: a constructor call to check.
_CONSTRUCTOR_CODES = frozenset(
    {EXT_CONSTRUCTOR_SINGLE_ARG, EXT_CONSTRUCTOR_POS_ARGS, EXT_CONSTRUCTOR_KW_ARGS, EXT_PYDANTIC_V1, EXT_PYDANTIC_V2}
)
# msgpack's ext type markers (fixext 1-16, ext 8/16/32). A payload without any of these
# bytes holds no extension, so there is nothing to check and the walk is skipped.
_EXT_MARKER = re.compile(rb"[\xc7-\xc9\xd4-\xd8]")


def type_key(item: type | tuple[str, str]) -> TypeKey:
    """`(module, name)` of a class, the form LangGraph's serializer writes into a checkpoint (`__name__`, not
    `__qualname__`: a class nested in another is written, and so must be allowed, under its own name)."""
    if isinstance(item, tuple):
        return (item[0], item[1])
    return (item.__module__, item.__name__)


def _refusal(module: str, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"checkpoint holds an object of type {module}.{name}, which is not on the deserialization "
        "allow-list; loading it would import and call code named by the database",
        fix=(
            f"if you trust this type, allow it: open_saver(..., allowed_types=[{module}.{name}]) "
            f"or StrictSerializer(allowed_types=[({module!r}, {name!r})])"
        ),
    )


def _undecodable(kind: str, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"a checkpoint value stored as {kind!r} could not be decoded: {exc}",
        fix="the row was not written by LangGraph's serializer or is damaged; delete the thread "
        "(agentstack threads delete THREAD) or restore it from a backup",
    )


class StrictSerializer(SerializerProtocol):
    """A serializer that raises `UnsafeCheckpointError` for any type not allowed.

    Writing is `JsonPlusSerializer`'s (so checkpoints stay readable by stock LangGraph);
    reading checks every constructor and method call in the payload before anything is
    imported, and never unpickles.
    """

    def __init__(self, allowed_types: Iterable[type | tuple[str, str]] = ()) -> None:
        self.allowed_types: frozenset[TypeKey] = DEFAULT_ALLOWED_TYPES | {type_key(t) for t in allowed_types}
        # The checks below run first; this serializer's own allow-lists are a second line.
        self._inner = JsonPlusSerializer(
            allowed_msgpack_modules=tuple(self.allowed_types),
            allowed_json_modules=tuple((*module.split("."), name) for module, name in self.allowed_types),
        )

    def with_allowed(self, extra: Iterable[type | tuple[str, str]]) -> StrictSerializer:
        """A copy that also allows `extra`."""
        return StrictSerializer(self.allowed_types | {type_key(t) for t in extra})

    def with_msgpack_allowlist(self, extra_allowlist: Iterable[tuple[str, ...] | type]) -> StrictSerializer:
        """The same serializer with a graph's own state classes allowed too.

        LangGraph asks for this (through `BaseCheckpointSaver.with_allowlist`) when a graph
        is compiled, naming its pydantic/dataclass state schemas. Those types are code the
        user wrote and compiled into the graph, so allowing them keeps strictness where it
        matters.
        """
        keys = [type_key(k) if isinstance(k, type) else (k[0], k[1]) for k in extra_allowlist]
        if set(keys) <= self.allowed_types:
            return self
        return self.with_allowed(keys)

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return self._inner.dumps_typed(obj)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind == "pickle":
            raise UnsafeCheckpointError(
                "checkpoint holds a pickled value; unpickling runs arbitrary code, so agentstack never does it",
                fix="store plain data, pydantic models or dataclasses in graph state (they serialize without pickle)",
            )
        if kind == "msgpack":
            if _EXT_MARKER.search(payload):
                self._check_msgpack(payload)
        elif kind == "json":
            self._check_json(payload)
        try:
            return self._inner.loads_typed(data)
        except ValueError as exc:  # ormsgpack's and json's decode errors
            raise _undecodable(kind, exc) from exc

    def _check_msgpack(self, payload: bytes) -> None:
        """Walk the payload, constructing nothing, and refuse the first type not allowed."""
        refusals: list[CheckpointError] = []
        try:
            ormsgpack.unpackb(payload, ext_hook=self._checking_hook(refusals), option=ormsgpack.OPT_NON_STR_KEYS)
        except ValueError as exc:
            # ormsgpack replaces an exception raised by a hook with a bare "ext_hook failed",
            # so the hook records what it refused.
            if refusals:
                raise refusals[0] from None
            raise _undecodable("msgpack", exc) from exc

    def _checking_hook(self, refusals: list[CheckpointError]) -> Callable[[int, bytes], None]:
        allowed = self.allowed_types

        def refuse(error: CheckpointError) -> CheckpointError:
            refusals.append(error)
            return error

        def hook(code: int, data: bytes) -> None:
            if code == EXT_NUMPY_ARRAY:
                return None  # (dtype, shape, order, buffer): plain values, nothing to call
            # Nested values are walked by this same hook, so they are checked too.
            inner = ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
            if code == EXT_DELTA_SNAPSHOT:
                return None
            if code == EXT_METHOD_SINGLE_ARG:
                module, name, method = str(inner[0]), str(inner[1]), str(inner[3])
                if (module, name, method) not in ALLOWED_METHODS:
                    raise refuse(_refusal(module, f"{name}.{method}"))
            elif code in _CONSTRUCTOR_CODES:
                module, name = str(inner[0]), str(inner[1])
                if (module, name) not in allowed:
                    raise refuse(_refusal(module, name))
            else:
                raise refuse(
                    CheckpointError(
                        f"checkpoint holds msgpack extension {code}, which this agentstack does not know",
                        fix="it was written by a newer langgraph-checkpoint; install the version agentstack pins",
                    )
                )
            return None

        return hook

    def _check_json(self, payload: bytes) -> None:
        """Refuse a legacy-JSON constructor (LangChain `lc` 1 or LangGraph `lc` 2) not allowed."""

        def check(value: dict[str, Any]) -> dict[str, Any]:
            if value.get("lc") in (1, 2) and value.get("type") == "constructor" and value.get("id"):
                path = tuple(str(p) for p in value["id"])
                if value["lc"] == 1:  # LangChain's ids are aliases; its reviver imports the mapped path
                    path = ALL_SERIALIZABLE_MAPPINGS.get(path, path)
                module, name = ".".join(path[:-1]), path[-1]
                if (module, name) not in self.allowed_types:
                    raise _refusal(module, name)
            return value

        try:
            json.loads(payload, object_hook=check)
        except ValueError as exc:
            raise _undecodable("json", exc) from exc
