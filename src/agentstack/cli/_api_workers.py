"""`agentstack api --workers N`: N worker processes behind one port, sharing what only one process may hold.

Each worker process is a whole agent server (the routes, and `--jobs` runs at a time) accepting on the
socket this process bound, so any request, a stream's reconnect included, may reach any worker: they share
everything through Postgres. What only one process may hold is opened here, once, and handed to them by
address: the embedded Postgres (its URL), Milvus Lite (its server's socket: a `.db` file is one process's),
and the model fleet (behind a gateway on a loopback port, as AGENTSTACK_LLM_BASE_URL: one fleet for all
workers, its router still spreading their calls over the replicas). A worker's own environment is ours
whole: it is agentstack, and runs graphs that may need any key the user set.

A worker that dies is replaced; its run waits for its lease to lapse (`AGENTSTACK_API_LEASE_S`), then a
worker continues it from its last checkpoint. Ctrl-C or SIGTERM stops them all, each giving its runs in
progress back to the queue. A worker whose supervisor died sees its stdin close and stops: no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from agentstack._stack import Stack
from agentstack.cli._serve import unless_stopped
from agentstack.config import Settings
from agentstack.errors import ConfigError
from agentstack.observability._metrics import MULTIPROCESS_ENV, Metrics

__all__ = ["supervise"]

_STOP_S = 60.0  # how long stopping workers get to give their runs back before they are killed
_RESTART_S = 1.0  # between a worker's death and its replacement: a worker that cannot start must not spin


async def supervise(
    stack: Stack,
    sock: socket.socket,
    *,
    workers: int,
    jobs: int,
    config: Path | None,
    stop: asyncio.Event,
    ready: Callable[[list[str]], None],
    console: Console | None = None,
    keys_required: bool = False,
) -> None:
    """Open the parts `stack` would open that only one process may hold, start `workers` worker processes on
    `sock`, replace any that dies, until `stop`; then stop them and close the parts."""
    console = console or Console(stderr=True)
    async with AsyncExitStack() as exits:
        sharing = asyncio.ensure_future(_share_parts(stack, exits))
        if not await unless_stopped(sharing, stop):
            return
        overrides = sharing.result()
        # the workers' metrics add up: each writes into one directory, any of them reports the sum
        metrics_dir = os.environ.get(MULTIPROCESS_ENV) or exits.enter_context(
            tempfile.TemporaryDirectory(prefix="agentstack-metrics-")
        )
        env = {**os.environ, **overrides, MULTIPROCESS_ENV: metrics_dir}
        command = [sys.executable, "-m", "agentstack.cli", "api-worker", str(sock.fileno()), "--jobs", str(jobs)]
        if config is not None:
            command += ["--config", str(config)]
        if keys_required:
            command.append("--keys-required")
        pool = _Workers(command, env, sock.fileno(), console, metrics_dir=metrics_dir)
        exits.push_async_callback(pool.stop)
        starting = asyncio.ensure_future(pool.start(workers))
        if not await unless_stopped(starting, stop):
            return
        ready(starting.result())
        await pool.keep_up(stop)


class _Workers:
    """The worker processes: started, watched, replaced, stopped."""

    def __init__(self, command: list[str], env: dict[str, str], fd: int, console: Console, *, metrics_dir: str) -> None:
        self.command, self.env, self.fd, self.console = command, env, fd, console
        self.metrics_dir = metrics_dir
        self.procs: dict[int, asyncio.subprocess.Process] = {}  # worker number -> its process

    async def start(self, count: int) -> list[str]:
        """Start `count` workers and wait until each serves; one that fails to start fails the start."""
        try:
            async with asyncio.TaskGroup() as starting:  # the first failure cancels the other starts
                first = starting.create_task(self._spawn(0))
                for number in range(1, count):
                    starting.create_task(self._spawn(number))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return first.result()

    async def _spawn(self, number: int) -> list[str]:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,  # never written: its end is the worker's sign that we are gone
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            pass_fds=(self.fd,),
        )
        self.procs[number] = proc
        assert proc.stdout is not None
        while True:  # until the worker says it serves; a graph module's own prints pass through
            line = await proc.stdout.readline()
            if not line:
                code = await proc.wait()
                raise ConfigError(
                    f"agent server worker {number} ended before it served ({_how(code)})",
                    fix="read its error above; `agentstack api --workers 1` runs the same server in one process",
                )
            with contextlib.suppress(ValueError):
                said = json.loads(line)
                if isinstance(said, dict) and "serving" in said:
                    break
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        asyncio.create_task(_forward(proc.stdout), name=f"output of worker {number}")  # noqa: RUF006
        return list(said["serving"])

    async def keep_up(self, stop: asyncio.Event) -> None:
        """Replace each worker that ends, until `stop`."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                ending = {asyncio.create_task(p.wait()): n for n, p in self.procs.items()}
                done, _ = await asyncio.wait({stopping, *ending}, return_when=asyncio.FIRST_COMPLETED)
                for task in ending:
                    task.cancel()
                for task in done & ending.keys():
                    number = ending[task]
                    if stop.is_set():
                        break
                    pid = self.procs[number].pid
                    Metrics.process_gone(pid, self.metrics_dir)  # its in-flight gauge leaves the sum
                    self.console.print(
                        f"agent server: worker {number} (pid {pid}) ended ({_how(task.result())}); starting another"
                    )
                    await asyncio.sleep(_RESTART_S)
                    try:
                        await self._spawn(number)
                    except ConfigError as exc:  # the next round tries again
                        self.console.print(f"agent server: {escape(exc.problem)}")
        finally:
            stopping.cancel()

    async def stop(self) -> None:
        """SIGTERM each worker (it gives its runs back), and SIGKILL the ones that outlast `_STOP_S`."""
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        waits = [p.wait() for p in self.procs.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), _STOP_S)
        except TimeoutError:
            for proc in self.procs.values():
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in self.procs.values()))


async def _share_parts(stack: Stack, exits: AsyncExitStack) -> dict[str, str]:
    """Start the parts of `stack` one process must hold; the settings (as variables) that lead workers to them."""
    from agentstack.checkpoint import LocalPostgres
    from agentstack.rag._index import is_lite_file, shared_milvus_lite
    from agentstack.rag._setup import index_uri

    settings, progress = stack.settings, stack.progress
    overrides = {"AGENTSTACK_WORKSPACE": str(settings.workspace)} if settings.workspace else {}
    if not settings.postgres_url:
        progress("checkpoints: starting Postgres")
        overrides["AGENTSTACK_POSTGRES_URL"] = await LocalPostgres.from_settings(settings).astart()
    if stack.wants_retrieval and is_lite_file(uri := index_uri(settings)):
        progress("retrieval: starting Milvus Lite for the workers")
        overrides["AGENTSTACK_MILVUS_URI"] = await exits.enter_async_context(shared_milvus_lite(uri))
    if stack.wants_models and not settings.llm_base_url:
        overrides |= await _share_fleet(settings, exits, progress)
    return overrides


async def _share_fleet(settings: Settings, exits: AsyncExitStack, progress: Callable[[str], None]) -> dict[str, str]:
    """Start the fleet and a gateway in front of it, on a loopback port only the workers are told."""
    from agentstack._net import free_port
    from agentstack.observability._observe import gateway_tracing
    from agentstack.serving import Fleet, gateway_server

    tracing = gateway_tracing(settings)  # the workers' model calls' route spans
    if tracing is not None:
        exits.callback(tracing.close)
    fleet = Fleet.from_settings(settings, tracing=tracing)
    model = fleet.chat_model_name()  # a wrong AGENTSTACK_LLM_MODEL fails before anything starts
    progress("models: starting the fleet")
    exits.push_async_callback(fleet.stop)
    await fleet.start()
    port = free_port()
    gateway = gateway_server(fleet, "127.0.0.1", port)
    gateway.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    serving = asyncio.create_task(gateway.serve(), name="the workers' gateway")

    async def close() -> None:
        gateway.should_exit = True
        await serving

    exits.push_async_callback(close)
    while not gateway.started and not serving.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if serving.done():
        serving.result()  # its failure, raised
    return {"AGENTSTACK_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1", "AGENTSTACK_LLM_MODEL": model}


async def _forward(stream: asyncio.StreamReader) -> None:
    """What a worker prints after it serves (a graph's own prints): to our output, so its pipe never fills."""
    while line := await stream.readline():
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"
