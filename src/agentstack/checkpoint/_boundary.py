"""Where psycopg meets agentstack: its errors become `CheckpointError`s that say what to do.

The saver, the group committer and retention all talk to Postgres; each wraps its calls in
`postgres_errors(url, doing=...)`, so a caller sees one error type with the server's
(redacted) address, the operation and a fix, and the psycopg error chained as the cause.
Cancellation (`asyncio.CancelledError`, a `BaseException`) passes through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from agentstack.errors import CheckpointError

__all__ = ["describe", "postgres_errors", "redact_url"]


def redact_url(url: str) -> str:
    """`user@host:port/db` of a Postgres URL, never its password, for messages and logs."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable Postgres URL>"
    return f"{info.get('user', '')}@{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def describe(exc: psycopg.Error, url: str) -> str:
    """psycopg's message, first line, without the URL's password.

    libpq quotes what it cannot parse, and in a malformed URL that can be the password itself
    (`invalid percent-encoded token: "s3cr%zzet"`), so a URL that does not parse gets no quote at all.
    """
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return "the URL cannot be parsed (check its percent-encoding and that it has no spaces)"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return detail.replace(str(password), "***") if password else detail


def _fix(exc: psycopg.Error) -> str:
    if isinstance(exc, psycopg_pool.PoolClosed):
        return "the saver's connection pool is closed: use the saver inside `async with open_saver(...)`"
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return "another transaction changed the same rows at the same time (a second prune?); retrying is safe"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return (
            "check that the Postgres server is running and reachable (`agentstack db status` for the embedded "
            "one) and that it accepts more connections; the operation can be retried once it is back"
        )
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return "create or migrate the checkpoint tables: open_saver(...) does, or `await saver.setup()`"
    return "look at the Postgres server's log for this error; the psycopg error is chained below"


@contextmanager
def postgres_errors(url: str, *, doing: str, fix: str | None = None) -> Iterator[None]:
    """Turn a psycopg error raised inside into a `CheckpointError` naming Postgres and `url` (redacted).

    `fix` replaces the fix chosen by the kind of error (connecting says more about the URL than a query does).
    """
    try:
        yield
    except psycopg.Error as exc:
        raise CheckpointError(
            f"Postgres at {redact_url(url)} failed while {doing}: {describe(exc, url)}", fix=fix or _fix(exc)
        ) from exc
