"""OpenAI-compatible servers someone else runs: routed to, health-checked and canaried, never launched."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agentstack.serving._backends._base import Backend

if TYPE_CHECKING:
    from agentstack.serving._spec import ModelSpec

__all__ = ["ExternalBackend"]

_RESOURCES = frozenset({"memory_gib", "kv_cache_gib", "gpus_per_replica", "threads", "parallel", "max_context"})


class ExternalBackend(Backend):
    """One replica per entry of the spec's `urls`; its resources, flags and metrics are its own business."""

    name = "external"
    launched = False
    takes = frozenset({"urls"})
    health_path = "/v1/models"
    install_hint = "start the server yourself and list its base URL in the spec's urls"

    @classmethod
    def refusals(cls, spec: ModelSpec) -> list[str]:
        refused = super().refusals(spec)
        if not spec.urls:
            refused.append("urls: an external model needs the base URL(s) of running servers")
        for url in spec.urls:
            if not url.startswith(("http://", "https://")):
                refused.append(f"urls: {url!r} is not an http(s) URL")
            elif urlsplit(url).path.rstrip("/") not in ("", "/v1"):
                # The router sends each request to the replica's scheme, host and port with the request's own path.
                refused.append(f"urls: {url!r} has a path prefix; give the server's root or its /v1 URL")
        return refused

    @classmethod
    def why_not(cls, field: str) -> str:
        if field == "replicas":
            return "an external model has one replica per entry in urls; remove replicas"
        if field in _RESOURCES:
            return f"an external server's resources are its own; remove {field}"
        return f"agentstack does not launch external servers; remove {field}"
