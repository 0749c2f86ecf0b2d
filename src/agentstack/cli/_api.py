"""`agentstack api`: every registered graph over the LangGraph HTTP API, on the stack's Postgres.

The stack opens as `agentstack run` opens it (Postgres, the index, the fleet or AGENTSTACK_LLM_BASE_URL); each
graph of the registry is served under its name and its system assistant id, run by `--workers` workers in
this process that claim runs from Postgres. With `--config langgraph.json`, the graphs it names are served
instead, on Postgres alone (they bring their own models).

Signals are ours, not uvicorn's (as in `agentstack serve`): Ctrl-C or SIGTERM stops accepting requests, gives
the runs in progress back to the queue (the next start, or another server on the same database, continues
them from their last checkpoint), then closes the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from rich.console import Console

from agentstack._stack import Stack
from agentstack.cli._serve import check_port_free
from agentstack.errors import ConfigError

__all__ = ["serve_api"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


async def serve_api(stack: Stack, host: str, port: int, *, workers: int, config: Path | None, console: Console) -> None:
    """`config`: a langgraph.json naming your graphs (served on `stack`'s Postgres); None: the registry's."""
    import uvicorn

    from agentstack.api._app import app_on, registered_graphs
    from agentstack.api._langgraph_json import load_langgraph_json, serve_user_graphs
    from agentstack.api._runs import RunQueue
    from agentstack.api._served import ServedGraphs

    if host not in _LOOPBACK:
        raise ConfigError(
            f"the agent server would listen on {host}, open to other machines, and it cannot authenticate callers yet",
            fix="--host 127.0.0.1, with an authenticating proxy in front of it to serve other machines",
        )
    if workers < 1:
        raise ConfigError(f"--workers is {workers}: nothing would run the queued runs", fix="--workers 1")
    check_port_free(host, port, what="the agent server")
    own = load_langgraph_json(config) if config is not None else None  # a bad config fails before Postgres starts
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with stack, contextlib.AsyncExitStack() as exits:
        assert stack.saver is not None
        served = registered_graphs(stack) if own is None else await serve_user_graphs(own, stack.saver, exits)
        graphs = ServedGraphs(served)
        app = app_on(RunQueue(stack.saver.conn), graphs, workers=workers)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        serving = asyncio.create_task(server.serve())
        stopper = asyncio.create_task(stop.wait())
        while not server.started and not serving.done() and not stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # uvicorn tells that it listens only by this attribute
        if server.started:
            names = ", ".join(g.graph_id for g in graphs)
            console.print(f"agent server: {names} at http://{host}:{port} ({workers} worker(s)); Ctrl-C stops")
        await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        server.should_exit = True  # stop accepting, finish open responses, then the workers drain
        await serving
    console.print("agent server: stopped (runs in progress went back to the queue)")
