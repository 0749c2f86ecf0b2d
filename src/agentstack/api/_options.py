"""What an agent server is set to: its runs' lease, how often it looks, how long it keeps streams, and its door
(keys, limits, screening, audit). One value, read once from `Settings` (`from_settings`) by `create_app` and
`agentstack api`, or built with changes by whoever serves `app_on` themselves (a test's `lease_s=1.0`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agentstack.config import Settings
from agentstack.observability._observe import Observability
from agentstack.safety._injection import InjectionPolicy
from agentstack.safety._jwt import JwtVerifier
from agentstack.safety._limits import RequestLimits, request_limits
from agentstack.safety._pii_policy import PiiPolicy, pii_scanner

__all__ = ["EVENT_RETENTION_S", "ServerOptions"]

EVENT_RETENTION_S = 86_400.0  # how long an ended run's stream can be joined again (and its events kept)


@dataclass(frozen=True)
class ServerOptions:
    lease_s: float = 30.0  # a worker's claim on a run, unrenewed
    poll_s: float = 0.05  # how often a stream or a wait looks for new events when not notified
    event_retention_s: float = EVENT_RETENTION_S
    keys_required: bool = False  # never open, even before the first key is made (a server others reach)
    max_body_bytes: int = 10_000_000
    audit_retention_days: float = 90
    injection: InjectionPolicy = field(default_factory=InjectionPolicy)
    pii: PiiPolicy = field(default_factory=PiiPolicy)  # on a run's input and a state update: off, mask, block
    jwt: JwtVerifier | None = None
    limits: RequestLimits = field(default_factory=RequestLimits)
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    observability: Observability = field(default_factory=Observability)  # runs' metrics, and traces; closed at stop

    @classmethod
    def from_settings(cls, settings: Settings, *, keys_required: bool = False) -> ServerOptions:
        scanner = pii_scanner(settings)  # one (a Presidio model is loaded once) for run input and traces alike
        return cls(
            lease_s=settings.api_lease_s,
            keys_required=keys_required,
            max_body_bytes=settings.max_body_bytes,
            audit_retention_days=settings.audit_retention_days,
            injection=InjectionPolicy(settings.injection, overrides=settings.injection_assistants),
            pii=PiiPolicy(settings.pii, scanner, overrides=settings.pii_assistants),
            jwt=JwtVerifier.from_settings(settings),
            limits=request_limits(settings),
            prices=settings.prices,
            observability=Observability.from_settings(settings, service="agentstack-api", scanner=scanner),
        )
