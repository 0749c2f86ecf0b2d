"""The operators' commands: `agentstack keys create|list|revoke|rotate`, `agentstack audit`, `agentstack usage`,
`agentstack metrics`. Registered on the app by `_app`; each imports what it uses when it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, get_args

import typer

from agentstack.cli._report import console, reports_errors
from agentstack.errors import ConfigError

__all__ = ["audit", "keys_app", "metrics", "usage"]

keys_app = typer.Typer(help="API keys for the agent server and the gateway: create, list, revoke, rotate.")


# -- API keys ------------------------------------------------------------------------------------
@keys_app.command("create")
@reports_errors
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses it (shown in lists and the audit).")],
    scope: Annotated[
        str | None, typer.Option(help="The graphs it may use: assistants=research,team (default: all).")
    ] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="It reads threads and runs, never writes.")] = False,
    admin: Annotated[bool, typer.Option("--admin", help="It sees every key's threads.")] = False,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Model tokens per minute.")] = None,
    max_runs: Annotated[int | None, typer.Option(help="Runs unfinished at once.")] = None,
    budget: Annotated[str | None, typer.Option(help="USD per period: 20/day (hour, day, week, month).")] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime: 30d, 12h, 2w...")] = None,
) -> None:
    """Make a key and print it once (Postgres keeps only its hash)."""
    from agentstack.cli._keys import create_key, parse_budget, parse_duration, parse_scope
    from agentstack.config import Settings

    amount, period = parse_budget(budget) if budget else (None, None)
    options = {
        "admin": admin,
        "read_only": read_only,
        "assistants": parse_scope(scope) if scope else None,
        "rpm": rpm,
        "tpm": tpm,
        "max_runs": max_runs,
        "budget_usd": amount,
        "budget_period": period,
        "expires_in_s": parse_duration(expires) if expires else None,
    }
    asyncio.run(create_key(Settings.load(), console, name=name, **options))


@keys_app.command("list")
@reports_errors
def keys_list(all_: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False) -> None:
    """The keys, what each may do, and whether it still works."""
    from agentstack.cli._keys import list_keys
    from agentstack.config import Settings

    asyncio.run(list_keys(Settings.load(), console, include_revoked=all_))


@keys_app.command("revoke")
@reports_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Stop a key working, on every server within a second."""
    from agentstack.cli._keys import revoke_key
    from agentstack.config import Settings

    asyncio.run(revoke_key(Settings.load(), console, key_id))


@keys_app.command("rotate")
@reports_errors
def keys_rotate(key_id: Annotated[str, typer.Argument(help="The key's id (keys list).")]) -> None:
    """A new secret for the key (same id, limits and threads); the old secret stops working."""
    from agentstack.cli._keys import rotate_key
    from agentstack.config import Settings

    asyncio.run(rotate_key(Settings.load(), console, key_id))


@reports_errors
def audit(
    key: Annotated[str | None, typer.Option(help="Only this key id's requests.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last while: 1h, 2d...")] = None,
    thread: Annotated[str | None, typer.Option(help="Only requests about this thread.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """What the agent server and the gateway were asked, by whom, and what the door decided (newest first)."""
    from agentstack.cli._keys import parse_duration, show_audit
    from agentstack.config import Settings

    since_s = parse_duration(since, option="--since") if since else None
    asyncio.run(
        show_audit(
            Settings.load(), console, key_id=key, since_s=since_s, thread_id=thread, limit=limit, as_json=as_json
        )
    )


@reports_errors
def usage(
    by: Annotated[str, typer.Option(help="Sum by model, graph, caller or thread.")] = "model",
    since: Annotated[str | None, typer.Option(help="Only the last while: 24h, 7d... (default: all).")] = None,
    output: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
) -> None:
    """What runs used (tokens) and cost (by AGENTSTACK_PRICES), from the agent server's and `run`'s usage rows."""
    from agentstack.cli._keys import parse_duration
    from agentstack.cli._usage import show_usage
    from agentstack.config import Settings
    from agentstack.observability._usage import Grouping

    if by not in (groupings := get_args(Grouping)):
        raise ConfigError(f"--by {by!r} is not a grouping", fix=f"--by {', '.join(groupings[:-1])} or {groupings[-1]}")
    if output not in ("table", "json", "csv"):
        raise ConfigError(f"--format {output!r} is not a format", fix="--format table, json or csv")
    since_s = parse_duration(since, option="--since") if since else None
    asyncio.run(show_usage(Settings.load(), console, by=by, since_s=since_s, output=output))  # type: ignore[arg-type]


@reports_errors
def metrics(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Serve /metrics on this port.")] = 9464,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="The metrics directory your processes write (default: PROMETHEUS_MULTIPROC_DIR)."),
    ] = None,
) -> None:
    """Serve the run metrics of your own processes (they use agentstack as a library, each with
    PROMETHEUS_MULTIPROC_DIR set to one directory) as one Prometheus /metrics, until Ctrl-C."""
    from agentstack.cli._metrics import serve_metrics

    serve_metrics(directory, host=host, port=port, console=console)
