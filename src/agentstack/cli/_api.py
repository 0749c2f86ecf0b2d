"""`agentstack api`: every registered graph over the LangGraph HTTP API, on the stack's Postgres.

The stack opens as `agentstack run` opens it (Postgres, the index, the fleet or AGENTSTACK_LLM_BASE_URL); each
graph of the registry is served under its name and its system assistant id, its runs claimed from Postgres
and run `--jobs` at a time. With `--config langgraph.json`, the graphs it names are served instead, on
Postgres alone (they bring their own models). `--workers N` above 1 runs N such servers as processes on
one port (see `_api_workers`).

Signals are ours, not uvicorn's (as in `agentstack serve`): Ctrl-C or SIGTERM stops accepting requests, gives
the runs in progress back to the queue (the next start, or another server on the same database, continues
them from their last checkpoint), then closes the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from agentstack._stack import Stack
from agentstack.config import Settings
from agentstack.errors import ConfigError

__all__ = ["LOOPBACK", "refuse_open_to_others", "serve_api", "serve_worker"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


async def serve_api(
    stack: Stack, host: str, port: int, *, workers: int, jobs: int, config: Path | None, console: Console
) -> None:
    """`stack` not yet open: this process opens it (one worker), or shares its parts with the worker processes.
    `config`: a langgraph.json naming your graphs (served on `stack`'s Postgres); None: the registry's."""
    from agentstack.api._langgraph_json import load_langgraph_json

    for option, value in (("--workers", workers), ("--jobs", jobs)):
        if value < 1:
            raise ConfigError(f"{option} is {value}: nothing would run the queued runs", fix=f"{option} 1")
    own = load_langgraph_json(config) if config is not None else None  # a bad config fails before Postgres starts
    if host not in LOOPBACK:
        await refuse_open_to_others(stack.settings, host, what="the agent server")
    stop = _stop_on_signals()
    with _listening(host, port) as sock:

        def serving(names: list[str]) -> None:
            each = f"{jobs} run{'s' if jobs > 1 else ''} at a time"
            each += f" in each of {workers} worker processes" if workers > 1 else ""
            console.print(f"agent server: {', '.join(names)} at http://{host}:{port} ({each}); Ctrl-C stops")

        public = host not in LOOPBACK
        if workers == 1:
            await serve_on(stack, sock, own=own, jobs=jobs, stop=stop, ready=serving, keys_required=public)
        else:
            from agentstack.cli._api_workers import supervise

            await supervise(
                stack, sock, workers=workers, jobs=jobs, config=config, stop=stop, ready=serving, console=console,
                keys_required=public,
            )  # fmt: skip
    console.print("agent server: stopped (runs in progress went back to the queue)")


async def serve_worker(stack: Stack, fd: int, *, jobs: int, config: Path | None, keys_required: bool) -> None:
    """One worker process of `agentstack api --workers N`: serves on the socket its supervisor bound (`fd`),
    says on stdout when it serves (a JSON line naming its graphs), and stops on SIGINT/SIGTERM or when its
    supervisor is gone (its stdin closes), so that no worker outlives the server."""
    from agentstack.api._langgraph_json import load_langgraph_json

    own = load_langgraph_json(config) if config is not None else None
    stop = _stop_on_signals()
    loop = asyncio.get_running_loop()

    def watch_supervisor() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the supervisor ended, however it ended
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_supervisor, name="supervisor watch", daemon=True).start()

    def ready(names: list[str]) -> None:
        print(json.dumps({"serving": names}), flush=True)

    with socket.socket(fileno=fd) as sock:
        await serve_on(stack, sock, own=own, jobs=jobs, stop=stop, ready=ready, keys_required=keys_required)


async def serve_on(
    stack: Stack,
    sock: socket.socket,
    *,
    own: dict[str, Any] | None,
    jobs: int,
    stop: asyncio.Event,
    ready: Callable[[list[str]], None],
    keys_required: bool = False,
) -> None:
    """Open `stack`, serve its graphs (or `own`) on the listening `sock` until `stop`, then drain and close."""
    import uvicorn

    from agentstack.api._app import app_on, registered_graphs
    from agentstack.api._langgraph_json import serve_user_graphs
    from agentstack.api._options import ServerOptions
    from agentstack.api._runs import RunQueue
    from agentstack.api._served import ServedGraphs

    options = ServerOptions.from_settings(stack.settings, keys_required=keys_required)
    stack.observability = options.observability  # one a process: the stack's fleet and checkpoints report to it
    async with stack, contextlib.AsyncExitStack() as exits:
        assert stack.saver is not None
        served = registered_graphs(stack) if own is None else await serve_user_graphs(own, stack.saver, exits)
        graphs = ServedGraphs(served)
        queue = RunQueue(stack.saver.conn)
        app = app_on(queue, graphs, workers=jobs, options=options)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        stopper = asyncio.create_task(stop.wait())
        while not server.started and not serving.done() and not stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # uvicorn tells that it listens only by this attribute
        if server.started:
            ready([g.graph_id for g in graphs])
        await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        server.should_exit = True  # stop accepting, finish open responses, then the workers drain
        await serving


async def refuse_open_to_others(settings: Settings, host: str, *, what: str) -> None:
    """A server on an address other machines reach must ask for keys: refuse to start while none exists."""
    from agentstack.checkpoint import open_saver
    from agentstack.safety import KeyStore
    from agentstack.safety._jwt import JwtVerifier

    if JwtVerifier.from_settings(settings) is not None:
        return  # callers bring tokens from an identity provider: never open
    async with open_saver(settings=settings, pool_size=1) as saver:
        store = KeyStore(saver.conn)
        await store.setup()
        active = await store.active()
    if not active:
        raise ConfigError(
            f"{what} would listen on {host}, open to other machines, and no API key exists to ask callers for",
            fix="create one first (agentstack keys create --name NAME), or --host 127.0.0.1",
        )


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[socket.socket]:
    """The listening socket every worker accepts on; a port in use fails here, before anything starts."""
    from agentstack.cli._serve import bound_socket

    with bound_socket(host, port, what="the agent server") as sock:
        sock.listen(2048)
        sock.set_inheritable(True)
        yield sock
