"""A replica as the router sees it: where it listens, whether to send to it, how busy it is."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Replica", "ReplicaState"]


class ReplicaState(StrEnum):
    """Only READY replicas take requests; DRAINING ones finish theirs while the fleet stops."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(eq=False)
class Replica:
    """Mutable state of one server; the fleet moves `state`, the router the rest (under its bookkeeping lock)."""

    model: str
    index: int
    base_url: str  # scheme://host:port, no path (an external URL with a path prefix is refused by its backend)
    state: ReplicaState = ReplicaState.STARTING
    outstanding: int = 0
    restarts: int = 0
    pid: int | None = None
    # Circuit breaker: after `failures` in a row, skip the replica until `open_until`; then it takes requests
    # again, and the first that fails opens the breaker once more (a success closes it).
    failures: int = 0
    open_until: float = 0.0
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 5.0
    served: int = field(default=0)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.index}"

    def accepts(self, now: float) -> bool:
        return self.state is ReplicaState.READY and now >= self.open_until

    def record_success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.served += 1

    def record_failure(self, now: float | None = None) -> None:
        self.failures += 1
        if self.failures >= self.breaker_threshold:
            self.open_until = (time.monotonic() if now is None else now) + self.breaker_cooldown_s

    @property
    def breaker_open(self) -> bool:
        return time.monotonic() < self.open_until
