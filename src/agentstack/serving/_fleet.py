"""`Fleet`: places, launches, canaries, supervises and routes to the servers of a `FleetSpec`.

    async with Fleet.from_settings(settings) as fleet:
        llm = fleet.chat_model()            # AGENTSTACK_LLM_MODEL, or the spec's first chat model

Start is all-or-nothing: every backend first prepares what it launches (finds its program,
assembles the weights), then every replica must come up and pass its canary; if any fails,
everything already started is stopped and the error carries that replica's last log lines. After
start, a replica that dies is restarted with exponential backoff, up to `max_restarts`, while the
router sends its traffic to the others. The fleet owns the connection pools the router and every
client it hands out borrow, and closes those clients and pools when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from agentstack._aio import all_or_none
from agentstack._bundled import bundled
from agentstack._net import free_port
from agentstack._one_at_a_time import OneAtATime
from agentstack.config import Settings
from agentstack.errors import BackendError, ConfigError
from agentstack.serving._backends._base import Backend, BackendContext, Prepared
from agentstack.serving._canary import run_canary
from agentstack.serving._clients import BorrowedTransport, FleetClients
from agentstack.serving._metrics import BackendStats, FleetMetrics, parse_backend_metrics
from agentstack.serving._nvml import GpuCollector, GpuInfo, gpu_inventory
from agentstack.serving._placement import Placement, place
from agentstack.serving._process import ServerProcess, Watchdog
from agentstack.serving._registry import BackendRegistry
from agentstack.serving._replica import Replica, ReplicaState
from agentstack.serving._router import Router
from agentstack.serving._spec import FleetSpec, ModelSpec

if TYPE_CHECKING:
    from agentstack.observability._tracing import Tracing

__all__ = ["Fleet", "default_fleet_spec"]

ROUTED_BASE_URL = "http://fleet.agentstack.invalid/v1"  # the router replaces the host; nothing resolves it
_PROBE_TIMEOUT = httpx.Timeout(5.0)
_SCRAPE_TIMEOUT = httpx.Timeout(2.0)  # a slow /metrics costs one missed sample, never a request's time
_log = logging.getLogger(__name__)


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
        default_chat_model: str | None = None,
        scrape_interval_s: float | None = 5.0,
        tracing: Tracing | None = None,
        otlp_traces_endpoint: str | None = None,
    ) -> None:
        """`default_chat_model`: what `chat_model()` serves when not given a name (checked against the spec).
        `tracing`: the router's spans (`Router`); its owner closes it. `otlp_traces_endpoint`: where the model
        servers that trace (vLLM, SGLang) send theirs.

        `scrape_interval_s`: how often the replicas' own `/metrics` are read for the fleet's metrics (None: only
        when `scrape_backends()` is called).
        """
        self.spec = spec
        self.home = home
        self.logs_dir = home / "fleet" / "logs"
        self._context = BackendContext(home=home, llama_server=llama_server, otlp_traces_endpoint=otlp_traces_endpoint)
        self._gpus = gpus
        self._cpu_count = cpu_count
        self._default_chat_model = default_chat_model
        if default_chat_model is not None:
            spec.chat_model_name(default_chat_model)  # a wrong name fails before anything starts
        self._scrape_interval_s = scrape_interval_s
        self.tracing = tracing
        self._members: list[_Member] = []
        self._watchdog: Watchdog | None = None
        self._clients: FleetClients | None = None
        self._probe: httpx.AsyncClient | None = None
        self._scraper: asyncio.Task[None] | None = None
        self._backend_stats: dict[Replica, BackendStats] = {}
        self._stopping = False
        self.metrics = FleetMetrics(lambda: self.replicas, lambda: self._backend_stats)
        self._gpu_telemetry = GpuCollector(self._replica_pids)
        self.metrics.registry.register(self._gpu_telemetry)
        self._router: Router | None = None
        self._one_at_a_time: OneAtATime | None = None  # the exact chat models' shared turn

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        spec_path: Path | None = None,
        *,
        backends: BackendRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> Fleet:
        """The one way to build a fleet from Settings (`agentstack serve`, `ingest --graph` and `Stack` use it).

        The spec is `spec_path`, else AGENTSTACK_FLEET, else cpu-tiny. AGENTSTACK_LLM_MODEL names the default
        chat model, unless AGENTSTACK_LLM_BASE_URL is set (then it names a model of that server, not of ours).
        """
        spec = FleetSpec.from_yaml(spec_path or settings.fleet or default_fleet_spec(), backends=backends)
        traces = None
        if settings.otlp_endpoint:
            from agentstack.observability._tracing import traces_url

            traces = traces_url(settings.otlp_endpoint)
        return cls(
            spec,
            home=settings.home,
            llama_server=settings.llama_server,
            default_chat_model=None if settings.llm_base_url else settings.llm_model,
            tracing=tracing,
            otlp_traces_endpoint=traces,
        )

    def _replica_pids(self) -> dict[int, tuple[str, str]]:
        """pid -> (model, replica index) of the server processes this fleet launched (GPU memory per replica)."""
        return {
            m.process.pid: (m.replica.model, str(m.replica.index))
            for m in self._members
            if m.process is not None and m.process.pid is not None
        }

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

    def chat_model_name(self) -> str:
        """The chat model graphs should use: the default given (AGENTSTACK_LLM_MODEL), else the spec's first."""
        return self.spec.chat_model_name(self._default_chat_model)

    def slots(self, name: str) -> int:
        """Requests model `name` serves at once over all its replicas (how far a batch job should fan out)."""
        spec = self.spec.model(self._base_name(name))
        replicas = spec.replicas if spec.launched else len(spec.urls)
        return max(1, replicas * spec.backend_class.slots(spec))

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._members:
            raise BackendError("the fleet is already started", fix="stop it first, or use another Fleet")
        needs_gpus = any(m.launched and m.gpus > 0 for m in self.spec.models)
        inventory = list(self._gpus) if self._gpus is not None else (gpu_inventory() if needs_gpus else [])
        placements = {(p.model, p.replica): p for p in place(self.spec, inventory, cpu_count=self._cpu_count)}
        self._stopping = False
        self._clients = FleetClients()
        self._probe = self._clients.async_client(BorrowedTransport(self._clients.transport), timeout=_PROBE_TIMEOUT)
        self._watchdog = Watchdog()
        try:
            for spec in self.spec.models:
                backend = spec.backend_class(self._context)
                prepared = await backend.prepare(spec) if spec.launched else None
                self._members += self._members_of(spec, backend, prepared, placements)
            self._router = Router(
                {s.name: [m.replica for m in self._members if m.spec is s] for s in self.spec.models},
                transport=self._clients.transport,
                sync_transport=self._clients.sync_transport,
                fallbacks={s.name: s.fallback for s in self.spec.models if s.fallback},
                aliases={a.name: s.name for s in self.spec.models for a in s.lora},
                dialects={s.name: s.backend_class.dialect for s in self.spec.models},
                metrics=self.metrics,
                tracing=self.tracing,
            )
            await all_or_none(self._bring_up(m) for m in self._members)
        except BaseException:
            await self.stop()
            raise
        for member in self._members:
            if member.process is not None:
                member.supervisor = asyncio.create_task(
                    self._supervise(member), name=f"supervise {member.replica.label}"
                )
        if self._scrape_interval_s:
            self._scraper = asyncio.create_task(self._scrape_periodically(self._scrape_interval_s))

    def _members_of(
        self,
        spec: ModelSpec,
        backend: Backend,
        prepared: Prepared | None,
        placements: dict[tuple[str, int], Placement],
    ) -> list[_Member]:
        if prepared is None:
            return [
                _Member(Replica(spec.name, i, url.rstrip("/").removesuffix("/v1")), spec, backend, None, None)
                for i, url in enumerate(spec.urls)
            ]
        assert self._watchdog is not None
        members = []
        for i in range(spec.replicas):
            port = free_port()
            placement = placements[spec.name, i]
            command = backend.command(spec, placement, prepared, host="127.0.0.1", port=port)
            process = ServerProcess(f"{spec.name}/{i}", command, self.logs_dir / f"{spec.name}-{i}.log", self._watchdog)
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
            assert self._clients is not None
            await run_canary(self._clients.transport, replica.base_url, member.spec, member.backend)
        replica.failures, replica.open_until = 0, 0.0
        replica.state = ReplicaState.READY

    async def _healthy(self, member: _Member) -> bool:
        assert self._probe is not None
        try:
            response = await self._probe.get(member.replica.base_url + member.backend.health_path)
        except httpx.HTTPError:  # not up yet, or gone: the caller decides what that means
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
                except Exception:  # a bug or the host failing (a full disk): give the replica up, say why
                    _log.exception("restarting %s failed; it is given up", replica.label)
                    await process.stop(grace_s=0)
                    replica.state = ReplicaState.FAILED
                    return

    async def stop(self) -> None:
        """Drain requests (up to `drain_timeout_s`), stop every server (SIGTERM, then SIGKILL), close the clients."""
        self._stopping = True
        for member in self._members:
            if member.replica.state is ReplicaState.READY:
                member.replica.state = ReplicaState.DRAINING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.drain_timeout_s
        while any(r.outstanding for r in self.replicas) and loop.time() < deadline:  # noqa: ASYNC110 (a count, no event)
            await asyncio.sleep(0.05)
        tasks = [m.supervisor for m in self._members if m.supervisor is not None]
        if self._scraper is not None:
            tasks.append(self._scraper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(
            *(m.process.stop(grace_s=10) for m in self._members if m.process is not None), return_exceptions=True
        )
        for member in self._members:
            member.replica.state = ReplicaState.STOPPED
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):  # stopping goes on: the pools and the watchdog must still close
                _log.error("a fleet task had failed: %r", outcome)
        self._scraper = None
        self._router = None
        self._one_at_a_time = None
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._clients is not None:
            await self._clients.aclose()  # every client handed out (chat models too), then the pools
            self._clients, self._probe = None, None
        self._backend_stats = {}
        self._members = []
        self._gpu_telemetry.close()

    # -- the servers' own metrics -----------------------------------------------------------------

    async def scrape_backends(self) -> dict[Replica, BackendStats]:
        """Read each ready replica's own `/metrics` now (2 s at most each); what the fleet's metrics then show.

        A replica whose backend declares no metric names (external), or that is not ready, is left out; a ready
        one that does not answer in time (busy) keeps its last figures, so its series do not blink out of
        Prometheus between two scrapes.
        """
        members = [m for m in self._members if m.backend.metrics is not None and m.replica.state is ReplicaState.READY]
        scraped = await asyncio.gather(*(self._scrape(m) for m in members))
        last = self._backend_stats
        self._backend_stats = {
            m.replica: stats if stats is not None else last[m.replica]
            for m, stats in zip(members, scraped, strict=True)
            if stats is not None or m.replica in last
        }
        return dict(self._backend_stats)

    async def _scrape(self, member: _Member) -> BackendStats | None:
        assert self._probe is not None and member.backend.metrics is not None
        url = member.replica.base_url + member.backend.metrics_path
        try:
            response = await self._probe.get(url, timeout=_SCRAPE_TIMEOUT)
            response.raise_for_status()
            return parse_backend_metrics(response.text, member.backend.metrics)
        except (httpx.HTTPError, ValueError) as exc:  # a metric sample is not worth more than a log line
            _log.debug("scraping %s failed: %r", url, exc)
            return None

    async def _scrape_periodically(self, interval_s: float) -> None:
        while True:
            try:
                await self.scrape_backends()
            except Exception:  # a bug here must not end the scraping, nor reach anyone's request
                _log.exception("scraping the replicas' metrics failed")
            await asyncio.sleep(interval_s)

    # -- clients ----------------------------------------------------------------------------------

    def process_of(self, replica: Replica) -> ServerProcess:
        """The server process behind a replica (for tests that crash one, and for log tails)."""
        for member in self._members:
            if member.replica is replica and member.process is not None:
                return member.process
        raise ConfigError(f"{replica.label} is not a launched replica of this fleet", fix="pass one of fleet.replicas")

    def http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client whose requests (`/v1/...` paths, OpenAI bodies) are routed over the fleet.

        Closed with the fleet; closing it earlier leaves the fleet's pool to the other clients.
        """
        return self._started_clients().async_client(self.router, base_url=ROUTED_BASE_URL.removesuffix("/v1"), **kwargs)

    def chat_model(self, name: str | None = None, *, exact: bool = False, **kwargs: Any) -> Any:
        """A `langchain_openai.ChatOpenAI` for model `name` (default: `chat_model_name()`), routed by this fleet.

        Tools and structured output work; its HTTP clients are closed with the fleet. A streamed reply (a graph
        run with `stream_run`) reports the server's token usage too (`stream_usage`; langchain-openai turns it
        on only for api.openai.com), so a run's `tokens_used` is the same streamed or not.

        `exact`: its replies repeat exactly, as far as the server allows, at a third or so of the speed: every
        exact model of this fleet takes turns (one request at a time, never batched together), and asks its
        backend to compute each prompt alone (llama.cpp: no cached prefix). Requests from elsewhere (another
        model, the gateway) can still be batched with them.
        """
        from langchain_openai import ChatOpenAI

        name = name or self.chat_model_name()
        spec = self.spec.model(self._base_name(name))
        if spec.task != "chat":
            raise ConfigError(f"model {name!r} serves {spec.task}, not chat", fix="pick a chat model of this fleet")
        clients = self._started_clients()
        timeout = kwargs.pop("timeout", 600.0)
        transport: Router | OneAtATime = self.router
        if exact:
            if self._one_at_a_time is None:
                self._one_at_a_time = OneAtATime(self.router, self.router)
            transport = self._one_at_a_time
            if spec.backend_class.exact_request:
                kwargs["extra_body"] = {**spec.backend_class.exact_request, **kwargs.get("extra_body", {})}
        return ChatOpenAI(
            model=name,
            base_url=ROUTED_BASE_URL,
            api_key="agentstack-fleet",  # type: ignore[arg-type]
            http_async_client=clients.async_client(transport, timeout=timeout),
            http_client=clients.sync_client(transport, timeout=timeout),
            **({"stream_usage": True} | kwargs),
        )

    def _started_clients(self) -> FleetClients:
        if self._clients is None or self._router is None:
            raise BackendError(
                "the fleet is not started", fix="use `async with Fleet(...) as fleet:` or `await start()`"
            )
        return self._clients

    def _base_name(self, name: str) -> str:
        for spec in self.spec.models:
            if any(a.name == name for a in spec.lora):
                return spec.name
        return name
