"""Assistants on Postgres: a served graph under a name of its own, with default config, context and metadata
for its runs, versioned, as the LangGraph API keeps them (notes/langgraph-http-api.md, section 1).

Each served graph has a system assistant (`uuid5(GRAPH_NAMESPACE, graph_id)`, metadata `created_by: system`),
registered when a server starts; clients create more (the same graph with other defaults, e.g. a research
assistant with `max_iterations: 3`). Every change is a new version; `set_latest` makes an older one current.
A run names an assistant, or the graph id for its system assistant; the assistant's context is the run's
default context, and its config the run's default config.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from agentstack.api._served import ServedGraph
from agentstack.errors import ConfigError, ConflictError, NotFoundError, UserError

__all__ = ["Assistant", "AssistantStore"]

_SORTS = ("assistant_id", "graph_id", "name", "created_at", "updated_at")
_FIELDS = "assistant_id, graph_id, name, description, config, context, metadata, version, created_at, updated_at"


@dataclass(frozen=True)
class Assistant:
    assistant_id: str
    graph_id: str
    name: str
    description: str | None
    config: dict[str, Any]
    context: dict[str, Any]
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime

    def json(self) -> dict[str, Any]:
        return {
            "assistant_id": self.assistant_id,
            "graph_id": self.graph_id,
            "name": self.name,
            "description": self.description,
            "config": self.config,
            "context": self.context,
            "metadata": self.metadata,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class AssistantStore:
    """The assistants of every server on one database (tables made by `RunQueue.setup`)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def register(self, served: Iterable[ServedGraph]) -> None:
        """Each served graph's system assistant, unless it exists (a restart keeps its versions)."""
        for graph in served:
            await self.create(
                graph.graph_id,
                assistant_id=graph.assistant_id,
                name=graph.graph_id,
                metadata={"created_by": "system"},
                if_exists="do_nothing",
            )

    async def create(
        self,
        graph_id: str,
        *,
        assistant_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
        if_exists: Literal["raise", "do_nothing"] = "raise",
    ) -> Assistant:
        assistant_id = _uuid(assistant_id or str(uuid.uuid4()))
        config, context = _config_and_context(config, context)
        values = {
            "id": assistant_id,
            "graph": graph_id,
            "name": name or "Untitled",
            "description": description,
            "config": Jsonb(config),
            "context": Jsonb(context),
            "metadata": Jsonb(dict(metadata or {})),
        }
        async with self.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    f"""INSERT INTO agentstack_assistants
    (assistant_id, graph_id, name, description, config, context, metadata, version)
VALUES (%(id)s, %(graph)s, %(name)s, %(description)s, %(config)s, %(context)s, %(metadata)s, 1)
ON CONFLICT (assistant_id) DO NOTHING RETURNING {_FIELDS}""",
                    values,
                )
            ).fetchone()
            if row is None:
                if if_exists == "raise":
                    raise ConflictError(
                        f"assistant {assistant_id} already exists", fix="use another id, or if_exists='do_nothing'"
                    )
                return await self.get(assistant_id)
            await _save_version(conn, row)
        return _assistant(row)

    async def get(self, assistant_id: str) -> Assistant:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    f"SELECT {_FIELDS} FROM agentstack_assistants WHERE assistant_id = %s", (_uuid(assistant_id),)
                )
            ).fetchone()
        if row is None:
            raise NotFoundError(f"there is no assistant {assistant_id}", fix="list them with /assistants/search")
        return _assistant(row)

    async def patch(
        self,
        assistant_id: str,
        *,
        graph_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> Assistant:
        """A new version: the fields given replace the current ones, except `metadata`, which is merged."""
        current = await self.get(assistant_id)
        if config is not None or context is not None:
            config, context = _config_and_context(config, context)
        async with self.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    f"""UPDATE agentstack_assistants SET
    graph_id = %(graph)s, name = %(name)s, description = %(description)s, config = %(config)s,
    context = %(context)s, metadata = metadata || %(metadata)s, updated_at = now(),
    version = (SELECT max(version) + 1 FROM agentstack_assistant_versions WHERE assistant_id = %(id)s)
WHERE assistant_id = %(id)s RETURNING {_FIELDS}""",
                    {
                        "id": current.assistant_id,
                        "graph": graph_id or current.graph_id,
                        "name": name or current.name,
                        "description": description if description is not None else current.description,
                        "config": Jsonb(config if config is not None else current.config),
                        "context": Jsonb(context if context is not None else current.context),
                        "metadata": Jsonb(dict(metadata or {})),
                    },
                )
            ).fetchone()
            if row is None:
                raise NotFoundError(f"there is no assistant {assistant_id}", fix="list them with /assistants/search")
            await _save_version(conn, row)
        return _assistant(row)

    async def delete(self, assistant_id: str) -> None:
        async with self.pool.connection() as conn:
            done = await conn.execute(
                "DELETE FROM agentstack_assistants WHERE assistant_id = %s", (_uuid(assistant_id),)
            )
        if not done.rowcount:
            raise NotFoundError(f"there is no assistant {assistant_id}", fix="list them with /assistants/search")

    async def search(
        self,
        *,
        graph_ids: list[str] | None,
        metadata: Mapping[str, Any] | None = None,
        graph_id: str | None = None,
        name: str | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> list[Assistant]:
        """Matching assistants (of `graph_ids` only, when given: those this server can run), newest first."""
        sort = sort_by or "created_at"
        if sort not in _SORTS:
            raise ConfigError(f"assistants cannot be sorted by {sort!r}", fix=f"one of {', '.join(_SORTS)}")
        key = f"lower({sort})" if sort in ("name", "graph_id") else sort
        direction = "ASC" if str(sort_order).lower() == "asc" else "DESC"
        where, args = _filter(metadata, graph_id, name, graph_ids)
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT {_FIELDS} FROM agentstack_assistants WHERE {where} "
                    f"ORDER BY {key} {direction}, assistant_id LIMIT %s OFFSET %s",
                    (*args, limit, offset),
                )
            ).fetchall()
        return [_assistant(r) for r in rows]

    async def count(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        graph_id: str | None = None,
        name: str | None = None,
        graph_ids: list[str] | None = None,
    ) -> int:
        where, args = _filter(metadata, graph_id, name, graph_ids)
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(f"SELECT count(*) AS n FROM agentstack_assistants WHERE {where}", args)
            ).fetchone()
        return int(row["n"]) if row is not None else 0

    async def versions(
        self, assistant_id: str, *, metadata: Mapping[str, Any] | None = None, limit: int = 10, offset: int = 0
    ) -> list[dict[str, Any]]:
        """The assistant's versions, newest first."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT assistant_id, graph_id, name, description, config, context, metadata, version, created_at "
                    "FROM agentstack_assistant_versions WHERE assistant_id = %s AND metadata @> %s "
                    "ORDER BY version DESC LIMIT %s OFFSET %s",
                    (_uuid(assistant_id), Jsonb(dict(metadata or {})), limit, offset),
                )
            ).fetchall()
        if not rows and offset == 0:
            await self.get(assistant_id)  # a missing assistant is a 404, not an empty list
        return [dict(r) for r in rows]

    async def set_latest(self, assistant_id: str, version: int) -> Assistant:
        """Make an earlier version current again (no new version is made)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    f"""UPDATE agentstack_assistants a SET graph_id = v.graph_id, name = v.name,
    description = v.description, config = v.config, context = v.context, metadata = v.metadata,
    version = v.version, updated_at = now()
FROM agentstack_assistant_versions v
WHERE a.assistant_id = %(id)s AND v.assistant_id = a.assistant_id AND v.version = %(version)s
RETURNING {", ".join(f"a.{f}" for f in _FIELDS.split(", "))}""",
                    {"id": _uuid(assistant_id), "version": int(version)},
                )
            ).fetchone()
        if row is None:
            await self.get(assistant_id)
            raise NotFoundError(
                f"assistant {assistant_id} has no version {version}", fix="list its versions with /versions"
            )
        return _assistant(row)


def _config_and_context(
    config: Mapping[str, Any] | None, context: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """As the LangGraph API keeps them in step: `config.configurable` and `context` are the same values."""
    config = dict(config or {})
    configurable = config.get("configurable") or {}
    if configurable and context:
        raise UserError("give either config.configurable or context, not both", fix="put the values in context")
    values = dict(configurable or context or {})
    return {**config, "configurable": values}, values


def _filter(
    metadata: Mapping[str, Any] | None, graph_id: str | None, name: str | None, graph_ids: list[str] | None
) -> tuple[str, tuple[Any, ...]]:
    where = (
        "metadata @> %s AND (%s::text IS NULL OR graph_id = %s) AND (%s::text IS NULL OR name ILIKE %s) "
        "AND (%s::text[] IS NULL OR graph_id = ANY(%s))"
    )
    pattern = f"%{name}%" if name else None
    return where, (Jsonb(dict(metadata or {})), graph_id, graph_id, name, pattern, graph_ids, graph_ids)


async def _save_version(conn: Any, row: Mapping[str, Any]) -> None:
    await conn.execute(
        """INSERT INTO agentstack_assistant_versions
    (assistant_id, version, graph_id, name, description, config, context, metadata)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            row["assistant_id"],
            row["version"],
            row["graph_id"],
            row["name"],
            row["description"],
            Jsonb(row["config"]),
            Jsonb(row["context"]),
            Jsonb(row["metadata"]),
        ),
    )


def _assistant(row: Mapping[str, Any]) -> Assistant:
    return Assistant(**{k: (str(v) if k == "assistant_id" else v) for k, v in row.items()})


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ConfigError(f"assistant id {value!r} is not a UUID", fix="use an assistant's id, or create one") from None
