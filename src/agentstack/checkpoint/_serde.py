"""Strict checkpoint deserialization: only allow-listed types come back to life.

LangGraph's default serializer imports and calls whatever module/name a checkpoint names
(CVE-2026-28277): anyone who can write to the checkpoint tables can run code in every
process that loads a checkpoint. Its own strict mode is not strict enough for us either:
a blocked type silently comes back as a plain dict or list, and a graph then runs on with
state that is quietly wrong. `StrictSerializer` refuses instead, with an error that names
the type and the one-line way to allow it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde import _msgpack as lg_msgpack
from langgraph.checkpoint.serde.jsonplus import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_METHOD_SINGLE_ARG,
    EXT_PYDANTIC_V1,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)

from agentstack.errors import UnsafeCheckpointError

__all__ = ["DEFAULT_ALLOWED_TYPES", "StrictSerializer", "type_key"]

TypeKey = tuple[str, str]

#: LangGraph's own list of harmless types (datetime, UUID, messages, Send, Command, ...).
DEFAULT_ALLOWED_TYPES: frozenset[TypeKey] = frozenset(
    (k[0], k[1]) for k in lg_msgpack.SAFE_MSGPACK_TYPES if len(k) == 2
)

_CONSTRUCTOR_CODES = frozenset(
    {EXT_CONSTRUCTOR_SINGLE_ARG, EXT_CONSTRUCTOR_POS_ARGS, EXT_CONSTRUCTOR_KW_ARGS, EXT_PYDANTIC_V1, EXT_PYDANTIC_V2}
)


def type_key(item: type | tuple[str, str]) -> TypeKey:
    """`(module, qualified name)` of a class, the form the serializer writes into a checkpoint."""
    if isinstance(item, tuple):
        return (item[0], item[1])
    return (item.__module__, item.__qualname__)


def _refusal(module: str, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"checkpoint holds an object of type {module}.{name}, which is not on the deserialization "
        "allow-list; loading it would import and call code named by the database",
        fix=(
            f"if you trust this type, allow it: open_saver(..., allowed_types=[{module}.{name}]) "
            f"or StrictSerializer(allowed_types=[({module!r}, {name!r})])"
        ),
    )


class StrictSerializer(JsonPlusSerializer):
    """A `JsonPlusSerializer` that raises `UnsafeCheckpointError` for any type not allowed.

    Writing is unchanged (so checkpoints stay readable by stock LangGraph); reading checks
    every constructor and method call in the payload before anything is imported.
    """

    def __init__(self, allowed_types: Iterable[type | tuple[str, str]] = ()) -> None:
        self.allowed_types: frozenset[TypeKey] = DEFAULT_ALLOWED_TYPES | {type_key(t) for t in allowed_types}
        self._allowed_hook = JsonPlusSerializer(allowed_msgpack_modules=tuple(self.allowed_types))._unpack_ext_hook
        super().__init__(allowed_msgpack_modules=None, __unpack_ext_hook__=self._checking_hook(None))

    def with_allowed(self, extra: Iterable[type | tuple[str, str]]) -> StrictSerializer:
        """A copy that also allows `extra`."""
        return StrictSerializer(self.allowed_types | {type_key(t) for t in extra})

    def with_msgpack_allowlist(self, extra_allowlist: Iterable[tuple[str, ...] | type]) -> StrictSerializer:
        # LangGraph calls this when a graph is compiled, to allow the graph's own state
        # classes (pydantic/dataclass state schemas). Those types are code the user wrote and
        # compiled into the graph, so allowing them keeps strictness where it matters.
        keys = [type_key(k) if isinstance(k, type) else (k[0], k[1]) for k in extra_allowlist]
        if set(keys) <= self.allowed_types:
            return self
        return self.with_allowed(keys)

    def _checking_hook(self, refusals: list[UnsafeCheckpointError] | None) -> Callable[[int, bytes], Any]:
        """An ext hook that checks before constructing; refusals are also recorded in `refusals`
        because ormsgpack replaces any exception from a hook with a bare "ext_hook failed"."""
        allowed = self.allowed_types
        allowed_hook = self._allowed_hook
        safe_methods = lg_msgpack.SAFE_MSGPACK_METHODS

        def refuse(module: str, name: str) -> UnsafeCheckpointError:
            error = _refusal(module, name)
            if refusals is not None:
                refusals.append(error)
            return error

        def hook(code: int, data: bytes) -> Any:
            if code in _CONSTRUCTOR_CODES or code == EXT_METHOD_SINGLE_ARG:
                # Decode with this same hook first, so nested objects are checked before the
                # permissive hook below constructs anything.
                tup = ormsgpack.unpackb(data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS)
                module, name = str(tup[0]), str(tup[1])
                if code == EXT_METHOD_SINGLE_ARG:
                    if (module, name, str(tup[3])) not in safe_methods:
                        raise refuse(module, f"{name}.{tup[3]}")
                elif (module, name) not in allowed:
                    raise refuse(module, name)
            return allowed_hook(code, data)

        return hook

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind == "pickle":
            raise UnsafeCheckpointError(
                "checkpoint holds a pickled value; unpickling runs arbitrary code, so agentstack never does it",
                fix="store plain data, pydantic models or dataclasses in graph state (they serialize without pickle)",
            )
        if kind == "json":
            return json.loads(payload, object_hook=self._checked_reviver)
        if kind == "msgpack":
            refusals: list[UnsafeCheckpointError] = []
            try:
                return ormsgpack.unpackb(
                    payload, ext_hook=self._checking_hook(refusals), option=ormsgpack.OPT_NON_STR_KEYS
                )
            except ValueError:
                if refusals:
                    raise refusals[0] from None
                raise
        return super().loads_typed(data)

    def _checked_reviver(self, value: dict[str, Any]) -> Any:
        if value.get("lc") in (1, 2) and value.get("type") == "constructor" and value.get("id"):
            path = [str(p) for p in value["id"]]
            module, name = ".".join(path[:-1]), path[-1]
            if (module, name) not in self.allowed_types and not _is_langchain_serializable(module, name):
                raise _refusal(module, name)
        return self._reviver(value)


def _is_langchain_serializable(module: str, name: str) -> bool:
    """LangChain's legacy JSON ids name the public path (`langchain_core.messages.HumanMessage`)."""
    if not module.startswith(("langchain_core.", "langchain.schema")):
        return False
    try:
        target = getattr(importlib.import_module(module.replace("langchain.schema", "langchain_core")), name)
    except (ImportError, AttributeError):
        return False
    return (target.__module__, target.__qualname__) in DEFAULT_ALLOWED_TYPES
