"""`Fleet`: places, launches, canaries, supervises and routes to the servers of a `FleetSpec`.

    async with Fleet(FleetSpec.from_yaml("serving/cpu-tiny.yaml"), home=settings.home) as fleet:
        llm = fleet.chat_model("chat")

Start is all-or-nothing: if any replica fails to come up or fails its canary, everything already
started is stopped and the error carries that replica's last log lines. After start, a replica
that dies is restarted with exponential backoff, up to `max_restarts`, while the router sends its
traffic to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentstack._bundled import bundled
from agentstack._net import free_port
from agentstack.config import Settings
from agentstack.errors import BackendError, ConfigError
from agentstack.serving._backends import Backend, backend_for
from agentstack.serving._canary import run_canary
from agentstack.serving._metrics import FleetMetrics
from agentstack.serving._nvml import GpuInfo, gpu_inventory
from agentstack.serving._placement import Placement, place
from agentstack.serving._process import ServerProcess, Watchdog
from agentstack.serving._replica import Replica, ReplicaState
from agentstack.serving._router import Router
from agentstack.serving._spec import FleetSpec, ModelSpec

__all__ = ["Fleet", "default_fleet_spec"]

ROUTED_BASE_URL = "http://fleet.agentstack.invalid/v1"  # the router replaces the host; nothing resolves it
_PROBE_TIMEOUT = httpx.Timeout(5.0)


def default_fleet_spec() -> Path:
    """The CPU default, `serving/cpu-tiny.yaml`: packaged in the wheel, or read from a source checkout."""
    return bundled("serving/specs", "serving") / "cpu-tiny.yaml"


@dataclass(eq=False)
class _Member:
    """A replica plus what the fleet needs to run it."""

    replica: Replica
    spec: ModelSpec
    backend: Backend
    placement: Placement | None
    process: ServerProcess | None  # None: external, not ours to launch
    supervisor: asyncio.Task[None] | None = None


class Fleet:
    """The running servers of one `FleetSpec`, their router, metrics and LangChain clients."""

    def __init__(
        self,
        spec: FleetSpec,
        *,
        home: Path,
        llama_server: Path | None = None,
        gpus: Sequence[GpuInfo] | None = None,
        cpu_count: int | None = None,
    ) -> None:
        self.spec = spec
        self.home = home
        self.logs_dir = home / "fleet" / "logs"
        self._llama_server = llama_server
        self._gpus = gpus
        self._cpu_count = cpu_count
        self._members: list[_Member] = []
        self._watchdog: Watchdog | None = None
        self._probe: httpx.AsyncClient | None = None
        self._stopping = False
        self.metrics = FleetMetrics(lambda: self.replicas)
        self._router: Router | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Fleet:
        path = settings.fleet or default_fleet_spec()
        return cls(FleetSpec.from_yaml(path), home=settings.home, llama_server=settings.llama_server)

    @property
    def replicas(self) -> list[Replica]:
        return [m.replica for m in self._members]

    @property
    def router(self) -> Router:
        if self._router is None:
            raise BackendError(
                "the fleet is not started", fix="use `async with Fleet(...) as fleet:` or `await start()`"
            )
        return self._router

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._members:
            raise BackendError("the fleet is already started", fix="stop it first, or use another Fleet")
        needs_gpus = any(m.backend != "external" and m.gpus > 0 for m in self.spec.models)
        inventory = list(self._gpus) if self._gpus is not None else (gpu_inventory() if needs_gpus else [])
        placements = {(p.model, p.replica): p for p in place(self.spec, inventory, cpu_count=self._cpu_count)}
        self._stopping = False
        self._watchdog = Watchdog()
        self._probe = httpx.AsyncClient(timeout=_PROBE_TIMEOUT)
        try:
            for spec in self.spec.models:
                self._members += self._members_of(spec, placements)
            self._router = Router(
                {s.name: [m.replica for m in self._members if m.spec is s] for s in self.spec.models},
                fallbacks={s.name: s.fallback for s in self.spec.models if s.fallback},
                aliases={a.name: s.name for s in self.spec.models for a in s.lora},
                metrics=self.metrics,
            )
            await asyncio.gather(*(self._bring_up(m) for m in self._members))
        except BaseException:
            await self.stop()
            raise
        for member in self._members:
            if member.process is not None:
                member.supervisor = asyncio.create_task(
                    self._supervise(member), name=f"supervise {member.replica.label}"
                )

    def _members_of(self, spec: ModelSpec, placements: dict[tuple[str, int], Placement]) -> list[_Member]:
        backend = backend_for(spec, llama_server=self._llama_server, models_dir=self.home / "models", home=self.home)
        if spec.backend == "external":
            return [
                _Member(Replica(spec.name, i, url.rstrip("/").removesuffix("/v1")), spec, backend, None, None)
                for i, url in enumerate(spec.urls)
            ]
        members = []
        for i in range(spec.replicas):
            port = free_port()
            placement = placements[spec.name, i]
            command = backend.command(spec, placement, host="127.0.0.1", port=port)
            process = ServerProcess(
                f"{spec.name}/{i}",
                command,
                self.logs_dir / f"{spec.name}-{i}.log",
                self._watchdog,  # type: ignore[arg-type]
            )
            members.append(
                _Member(Replica(spec.name, i, f"http://127.0.0.1:{port}"), spec, backend, placement, process)
            )
        return members

    async def _bring_up(self, member: _Member) -> None:
        replica = member.replica
        replica.state = ReplicaState.STARTING
        if member.process is None:
            if not await self._healthy(member):
                raise BackendError(
                    f"external model {member.spec.name!r} at {replica.base_url} is not answering "
                    f"{member.backend.health_path}",
                    fix="start that server, or correct its URL in the fleet spec",
                )
        else:
            await member.process.start()
            replica.pid = member.process.pid
            await member.process.wait_ready(lambda: self._healthy(member), member.spec.startup_timeout_s)
        if self.spec.canary:
            assert self._probe is not None
            await run_canary(self._probe, replica.base_url, member.spec, member.backend)
        replica.failures, replica.open_until = 0, 0.0
        replica.state = ReplicaState.READY

    async def _healthy(self, member: _Member) -> bool:
        assert self._probe is not None
        try:
            response = await self._probe.get(member.replica.base_url + member.backend.health_path)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _supervise(self, member: _Member) -> None:
        """Restart a replica that dies, with doubling backoff, until `max_restarts` is spent."""
        process, replica = member.process, member.replica
        assert process is not None
        while True:
            await process.wait()
            if self._stopping:
                return
            await process.stop(grace_s=0)  # workers the leader left behind, and the watchdog's entry
            while True:
                if replica.restarts >= self.spec.max_restarts:
                    replica.state = ReplicaState.FAILED
                    return
                replica.state = ReplicaState.RESTARTING
                await asyncio.sleep(min(self.spec.restart_backoff_s * 2**replica.restarts, 60.0))
                replica.restarts += 1
                try:
                    await self._bring_up(member)
                    break
                except BackendError:
                    await process.stop(grace_s=0)

    async def stop(self) -> None:
        """Drain in-flight requests (up to `drain_timeout_s`), then stop every server: SIGTERM, then SIGKILL."""
        self._stopping = True
        for member in self._members:
            if member.replica.state is ReplicaState.READY:
                member.replica.state = ReplicaState.DRAINING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.drain_timeout_s
        while any(r.outstanding for r in self.replicas) and loop.time() < deadline:  # noqa: ASYNC110 (a count, no event)
            await asyncio.sleep(0.05)
        for member in self._members:
            if member.supervisor is not None:
                member.supervisor.cancel()
        await asyncio.gather(
            *(m.process.stop(grace_s=10) for m in self._members if m.process is not None), return_exceptions=True
        )
        for member in self._members:
            member.replica.state = ReplicaState.STOPPED
            if member.supervisor is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await member.supervisor
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._router is not None:
            await self._router.aclose()
        if self._probe is not None:
            await self._probe.aclose()
            self._probe = None
        self._members = []

    # -- clients ----------------------------------------------------------------------------------

    def process_of(self, replica: Replica) -> ServerProcess:
        """The server process behind a replica (for tests that crash one, and for log tails)."""
        for member in self._members:
            if member.replica is replica and member.process is not None:
                return member.process
        raise ConfigError(f"{replica.label} is not a launched replica of this fleet", fix="pass one of fleet.replicas")

    def http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client whose requests (`/v1/...` paths, OpenAI bodies) are routed over the fleet."""
        return httpx.AsyncClient(transport=self.router, base_url=ROUTED_BASE_URL.removesuffix("/v1"), **kwargs)

    def chat_model(self, name: str, **kwargs: Any) -> Any:
        """A `langchain_openai.ChatOpenAI` for model `name`, routed by this fleet (tools and structured output work)."""
        from langchain_openai import ChatOpenAI

        spec = self.spec.model(self._base_name(name))
        if spec.task != "chat":
            raise ConfigError(f"model {name!r} serves {spec.task}, not chat", fix="pick a chat model of this fleet")
        timeout = kwargs.pop("timeout", 600.0)
        return ChatOpenAI(
            model=name,
            base_url=ROUTED_BASE_URL,
            api_key="agentstack-fleet",  # type: ignore[arg-type]
            http_async_client=httpx.AsyncClient(transport=self.router, timeout=timeout),
            http_client=httpx.Client(transport=self.router, timeout=timeout),
            **kwargs,
        )

    def _base_name(self, name: str) -> str:
        for spec in self.spec.models:
            if any(a.name == name for a in spec.lora):
                return spec.name
        return name
