"""`agentstack serve`: start a fleet, put the gateway in front, show a live table, stop cleanly.

Signals are ours, not uvicorn's: SIGINT/SIGTERM set one event, which aborts a start in progress
or ends serving, and the fleet then drains and stops its servers. (uvicorn re-raises captured
signals when it returns, which would interrupt that drain.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from agentstack.config import Settings
from agentstack.errors import ConfigError
from agentstack.safety import Authenticator, KeyStore
from agentstack.safety._audit import AuditLog
from agentstack.safety._gateway_policy import GatewayPolicy
from agentstack.safety._jwt import JwtVerifier
from agentstack.serving import Fleet, Replica, gateway_server

__all__ = ["bound_socket", "check_port_free", "serve_fleet", "serve_with_keys", "unless_stopped"]


def status_table(fleet: Fleet, title: str, replicas: Sequence[Replica] | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("replica", "backend", "state", "pid", "url", "in flight", "served", "restarts"):
        table.add_column(column)
    backends = {s.name: s.backend for s in fleet.spec.models}
    for r in fleet.replicas if replicas is None else replicas:
        colour = {"ready": "green", "failed": "red", "restarting": "yellow"}.get(r.state.value, "cyan")
        table.add_row(
            r.label,
            backends[r.model],
            f"[{colour}]{r.state.value}[/]",
            str(r.pid or "-"),
            r.base_url,
            str(r.outstanding),
            str(r.served),
            str(r.restarts),
        )
    return table


async def serve_fleet(
    fleet: Fleet,
    host: str,
    port: int,
    console: Console,
    *,
    policy: GatewayPolicy | None = None,
    max_body_bytes: int = 10_000_000,
) -> None:
    """`policy`: what requests meet at the gateway (`serve_with_keys` gives it the settings' door)."""
    check_port_free(host, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = f"http://{host}:{port}/v1"
    phase = "starting models"
    with Live(status_table(fleet, phase), console=console, refresh_per_second=2) as live:

        async def refresh() -> None:
            while True:
                live.update(status_table(fleet, f"agentstack fleet · {url} · {phase} · Ctrl-C stops"))
                await asyncio.sleep(0.5)

        refresher = asyncio.create_task(refresh())
        replicas: list[Replica] = []
        try:
            if not await unless_stopped(fleet.start(), stop):
                return
            replicas = fleet.replicas  # kept for the final table: stop() forgets them
            server = gateway_server(fleet, host, port, policy, max_body_bytes=max_body_bytes)
            server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
            phase = "serving"
            serving = asyncio.create_task(server.serve())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            server.should_exit = True  # uvicorn stops accepting, finishes open responses, returns
            await serving
        finally:
            phase = "stopping (draining requests)"
            await fleet.stop()
            refresher.cancel()
            live.update(status_table(fleet, "agentstack fleet · stopped", replicas))


async def serve_with_keys(fleet: Fleet, host: str, port: int, console: Console, settings: Settings) -> None:
    """`serve_fleet` with API keys from the settings' Postgres: a key is asked for once one exists, and a
    gateway on an address other machines reach refuses to start while none does."""
    from agentstack.checkpoint import open_saver
    from agentstack.cli._api import LOOPBACK, refuse_open_to_others

    check_port_free(host, port)
    if host not in LOOPBACK:
        await refuse_open_to_others(settings, host, what="the gateway")
    async with open_saver(settings=settings, pool_size=2) as saver:
        store = KeyStore(saver.conn)
        await store.setup()
        auth = Authenticator(store, required=host not in LOOPBACK, jwt=JwtVerifier.from_settings(settings))
        try:
            async with AuditLog(saver.conn, retention_days=settings.audit_retention_days) as audit:
                policy = GatewayPolicy.from_settings(settings, auth, audit)
                await serve_fleet(fleet, host, port, console, policy=policy, max_body_bytes=settings.max_body_bytes)
        finally:
            await auth.aclose()


async def unless_stopped(work: Awaitable[Any], stop: asyncio.Event) -> bool:
    """Run `work` to its end (True) unless `stop` is set first (then cancel it: False). Given a task, its
    result is the task's to keep."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def check_port_free(host: str, port: int, *, what: str = "the gateway") -> None:
    """Fail before anything starts when `host:port` is taken, naming `what` would have listened there."""
    with bound_socket(host, port, what=what):
        pass


@contextlib.contextmanager
def bound_socket(host: str, port: int, *, what: str) -> Iterator[socket.socket]:
    """A socket bound to `host:port`, or a `ConfigError` naming `what` would have listened there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"{what} cannot listen on {host}:{port}: {exc.strerror}",
                fix="pass another --port, or stop what uses it",
            ) from exc
        yield sock
