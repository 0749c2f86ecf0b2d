"""The request bodies the agent server accepts, as pydantic models: checked before a handler runs (a wrong type
or an unknown key is a 422 naming the field), and the schemas `/openapi.json` publishes.

Keys follow what `langgraph_sdk` 0.4 sends (notes/langgraph-http-api.md). A key the SDK may send for a feature
this server does not have is accepted only empty (`None`), so it is refused by name rather than ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from agentstack.errors import ConfigError

__all__ = [
    "AssistantCount",
    "AssistantCreate",
    "AssistantPatch",
    "AssistantSearch",
    "AssistantVersions",
    "History",
    "RunBatch",
    "RunCreate",
    "SetLatest",
    "StateUpdate",
    "ThreadCount",
    "ThreadCreate",
    "ThreadPatch",
    "ThreadSearch",
    "validated",
]

Json = dict[str, Any]
Limit = Field(default=10, ge=1, le=1000)
Offset = Field(default=0, ge=0)
SortOrder = Literal["asc", "desc", "ASC", "DESC"] | None
ThreadStatus = Literal["idle", "busy", "interrupted", "error"] | None


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssistantCreate(Body):
    graph_id: str = Field(min_length=1)
    assistant_id: str | None = None
    config: Json | None = None
    context: Json | None = None
    metadata: Json | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None
    name: str | None = None
    description: str | None = None


class AssistantPatch(Body):
    graph_id: str | None = None
    config: Json | None = None
    context: Json | None = None
    metadata: Json | None = None
    name: str | None = None
    description: str | None = None


class AssistantSearch(Body):
    metadata: Json | None = None
    graph_id: str | None = None
    name: str | None = None
    limit: int = Limit
    offset: int = Offset
    sort_by: Literal["assistant_id", "graph_id", "name", "created_at", "updated_at"] | None = None
    sort_order: SortOrder = None
    select: None = None


class AssistantCount(Body):
    metadata: Json | None = None
    graph_id: str | None = None
    name: str | None = None


class AssistantVersions(Body):
    metadata: Json | None = None
    limit: int = Limit
    offset: int = Offset


class SetLatest(Body):
    version: int = Field(ge=1)


class ThreadCreate(Body):
    thread_id: str | None = None
    metadata: Json | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None
    supersteps: None = None
    ttl: None = None


class ThreadSearch(Body):
    metadata: Json | None = None
    values: None = None
    ids: list[str] | None = None
    status: ThreadStatus = None
    limit: int = Limit
    offset: int = Offset
    sort_by: Literal["thread_id", "status", "created_at", "updated_at"] | None = None
    sort_order: SortOrder = None
    select: None = None
    extract: None = None


class ThreadCount(Body):
    metadata: Json | None = None
    values: None = None
    status: ThreadStatus = None


class ThreadPatch(Body):
    metadata: Json | None = None
    ttl: None = None


class StateUpdate(Body):
    values: Json | list[Any] | None = None
    as_node: str | None = None
    checkpoint_id: str | None = None
    checkpoint: Json | None = None


class History(Body):
    limit: int = Limit
    before: str | Json | None = None
    metadata: Json | None = None
    checkpoint: Json | None = None
    select: None = None


class RunCreate(Body):
    """A run's body, on a thread or stateless. The values of the fields not served yet that are accepted are
    their defaults (see `agentstack.api._app`)."""

    assistant_id: str = Field(min_length=1)
    input: Any = None
    command: Json | None = None
    config: Json | None = None
    context: Json | None = None
    metadata: Json | None = None
    stream_mode: str | list[str] | None = None  # checked by the server, which names a mode it does not serve
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None
    if_not_exists: Literal["reject", "create"] | None = None
    on_disconnect: Literal["cancel", "continue"] | None = None
    on_completion: Literal["delete", "keep"] | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    checkpoint_during: bool | None = None
    strict_resume: Literal[False] | None = None
    after_seconds: Literal[0] | None = None
    feedback_keys: None = None
    webhook: None = None
    checkpoint: Json | None = None  # {"checkpoint_id": ..., "checkpoint_ns": ...}: where the run starts
    checkpoint_id: str | None = Field(default=None, min_length=1)
    langsmith_tracer: None = None


class RunBatch(RootModel[list[RunCreate]]):
    pass


def validated(model: type[BaseModel], raw: Any) -> Any:
    """`raw` checked against `model`, as plain JSON again (the keys it was sent with); or a ConfigError (422)
    naming each field that does not fit."""
    try:
        checked = model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise ConfigError(f"the request body does not fit: {problems}", fix="see /openapi.json for the body") from None
    return checked.model_dump(mode="json", exclude_unset=True)


def _problem(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return f"{where} is not a field this server knows or serves"
    if error["type"] == "none_required":
        return f"{where} is not served by this server yet (leave it out)"
    return f"{where}: {error['msg']}"
