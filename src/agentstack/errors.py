"""One error tree for the whole library.

Every error names the problem and, where there is one, the fix, so a user reading a
traceback (or the CLI's one-line report) knows what to do next without reading our code.
`UserError` means "the library was used wrongly or is misconfigured"; the other branches
mean "something failed while running" and say which layer it came from.
"""

from __future__ import annotations

__all__ = [
    "AgentStackError",
    "UserError",
    "ConfigError",
    "MissingDependencyError",
    "PostgresServerError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "BackendError",
    "RetrievalError",
    "GraphInputError",
    "ModelOutputError",
    "NotFoundError",
    "ConflictError",
    "LeaseLostError",
    "ForbiddenError",
    "LimitError",
    "BudgetError",
]


class AgentStackError(Exception):
    """Base of every error agentstack raises on purpose."""

    def __init__(self, problem: str, *, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class UserError(AgentStackError):
    """The library was called wrongly; the message says how to call it."""


class ConfigError(UserError):
    """A setting, file or argument has a value that cannot work."""


class MissingDependencyError(UserError):
    """An optional package or a system program is not installed."""


class PostgresServerError(AgentStackError):
    """The embedded PostgreSQL server could not be initialised, started or reached."""


class CheckpointError(AgentStackError):
    """A checkpoint could not be saved, loaded or pruned."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds a type that is not on the deserialization allow-list."""


class BackendError(AgentStackError):
    """A model server failed to start, answer or stay healthy."""


class RetrievalError(AgentStackError):
    """Ingestion or retrieval failed."""


class GraphInputError(UserError):
    """A graph was given input or a resume value it cannot use; the message names the field."""


class ModelOutputError(BackendError):
    """A model's reply did not parse as the structured output the graph asked for."""

    def __init__(self, problem: str, *, fix: str | None = None, tokens_used: int = 0) -> None:
        super().__init__(problem, fix=fix)
        self.tokens_used = tokens_used
        """What the failed attempts cost, so a graph that carries on can still charge its token budget."""


class NotFoundError(UserError):
    """A thread, run or assistant that was asked for does not exist (the agent server answers 404)."""


class ForbiddenError(UserError):
    """The caller's key does not allow this: another graph than its scope, a write with a read-only key (403)."""


class LimitError(UserError):
    """A caller is over one of its limits (requests, tokens, runs at once): the server answers 429."""


class BudgetError(LimitError):
    """A caller spent its budget for the period (the servers answer 402)."""


class ConflictError(UserError):
    """The request conflicts with what is stored: an id taken, a thread busy (the agent server answers 409)."""


class LeaseLostError(AgentStackError):
    """A worker acted on a run it no longer holds: its lease lapsed and another worker took it over."""
