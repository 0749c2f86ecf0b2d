"""`agentstack keys` and `agentstack audit`: API keys for the agent server and the gateway, kept (hashed) in the
settings' Postgres, and what the two servers were asked.

`create` prints the key once, with how to use it; nothing can show it again (`rotate` makes a new secret for the
same key id). A server that runs sees a new, revoked or rotated key within a second.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentstack.cli._database import opened_store
from agentstack.config import Settings
from agentstack.errors import ConfigError
from agentstack.safety import ApiKey, KeyStore, NewKey

__all__ = [
    "create_key", "list_keys", "parse_budget", "parse_duration", "parse_scope", "revoke_key", "rotate_key",
    "show_audit",
]  # fmt: skip

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PERIODS = ("hour", "day", "week", "month")


def parse_duration(text: str, *, option: str = "--expires") -> float:
    """`30d`, `12h`, `90m`, `2w`, `45s` -> seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if found is None or float(found[1]) <= 0:
        raise ConfigError(f"{option} {text!r} is not a duration", fix=f"{option} 30d (s, m, h, d or w)")
    return float(found[1]) * _UNITS[found[2]]


def parse_budget(text: str) -> tuple[float, str]:
    """`20/day` -> (20.0, "day"): US dollars per period."""
    found = re.fullmatch(r"\s*\$?(\d+(?:\.\d+)?)\s*/\s*(\w+)\s*", text)
    if found is None or found[2] not in _PERIODS or float(found[1]) <= 0:
        periods = ", ".join(_PERIODS)
        raise ConfigError(f"--budget {text!r} is not an amount per period", fix=f"--budget 20/day ({periods})")
    return float(found[1]), found[2]


def parse_scope(text: str) -> list[str]:
    """`assistants=research,team` -> the graphs a key may use."""
    kind, _, names = text.partition("=")
    graphs = [n.strip() for n in names.split(",") if n.strip()]
    if kind.strip() != "assistants" or not graphs:
        raise ConfigError(f"--scope {text!r} names no assistants", fix="--scope assistants=research,team")
    return graphs


async def create_key(settings: Settings, console: Console, **options: object) -> NewKey:
    async with opened_store(settings, KeyStore) as store:
        made = await store.create(**options)  # type: ignore[arg-type]
    console.print(f"key {made.key.key_id} ({escape(made.key.name)}): {_limits(made.key)}")
    console.print(f"[bold]{made.secret}[/]")
    console.print(
        "[dim]shown once, not stored: send it as x-api-key (langgraph_sdk: get_client(url, api_key=...)) or "
        "Authorization: Bearer (openai: OpenAI(base_url, api_key=...)). Every server on this database now asks "
        "for a key.[/]"
    )
    return made


async def list_keys(settings: Settings, console: Console, *, include_revoked: bool) -> None:
    async with opened_store(settings, KeyStore) as store:
        keys = await store.list(include_revoked=include_revoked)
    table = Table(title=f"{len(keys)} key(s)", title_justify="left")
    for column in ("id", "name", "may", "created", "expires", "state"):
        table.add_column(column)
    now = datetime.now(UTC)
    for key in keys:
        state = "revoked" if key.revoked_at else "expired" if not key.active(now) else "active"
        expires = key.expires_at.isoformat(timespec="minutes") if key.expires_at else "never"
        table.add_row(
            key.key_id, escape(key.name), _limits(key), key.created_at.isoformat(timespec="minutes"), expires, state
        )
    console.print(table)


async def revoke_key(settings: Settings, console: Console, key_id: str) -> None:
    async with opened_store(settings, KeyStore) as store:
        key = await store.revoke(key_id)
    console.print(f"key {key.key_id} ({escape(key.name)}) revoked: servers refuse it within a second")


async def rotate_key(settings: Settings, console: Console, key_id: str) -> None:
    async with opened_store(settings, KeyStore) as store:
        made = await store.rotate(key_id)
    console.print(f"key {made.key.key_id} ({escape(made.key.name)}) has a new secret; the old one no longer works:")
    console.print(f"[bold]{made.secret}[/]")


def _limits(key: ApiKey) -> str:
    parts = ["admin" if key.admin else "own threads", "read-only" if key.read_only else "read-write"]
    parts.append(f"assistants {','.join(key.assistants)}" if key.assistants is not None else "every assistant")
    if key.rpm:
        parts.append(f"{key.rpm} requests/min")
    if key.tpm:
        parts.append(f"{key.tpm} tokens/min")
    if key.max_runs:
        parts.append(f"{key.max_runs} runs at once")
    if key.budget_usd:
        parts.append(f"${key.budget_usd:g}/{key.budget_period}")
    return ", ".join(parts)


async def show_audit(
    settings: Settings,
    console: Console,
    *,
    key_id: str | None,
    since_s: float | None,
    thread_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit log's entries, newest first: a table, or JSON lines (for `jq` and log shippers)."""
    import json

    from agentstack.safety._audit import AuditLog

    async with opened_store(settings, KeyStore) as store:
        entries = await AuditLog(store.pool).read(key_id=key_id, since_s=since_s, thread_id=thread_id, limit=limit)
    if as_json:
        for entry in entries:
            print(json.dumps(entry, default=str))
        return
    table = Table(title=f"{len(entries)} request(s), newest first", title_justify="left")
    for column in ("at", "server", "key", "request", "status", "ms", "decision"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            e["at"].isoformat(timespec="seconds"),
            e["server"],
            e["key_id"] or "-",
            escape(f"{e['method']} {e['path']}"),
            str(e["status"]),
            f"{e['latency_ms']:.1f}",
            e["decision"] or "",
        )
    console.print(table)
