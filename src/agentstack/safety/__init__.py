"""Safety at the door of the agent server and the model gateway: API keys (hashed in Postgres), who is calling,
and what each key may do. See docs/safety.md.

    store = KeyStore(pool)                       # a psycopg async pool: open_pool(url)
    await store.setup()
    made = await store.create("ci", assistants=["research"], read_only=True)
    print(made.secret)                           # shown once; Postgres keeps only a scrypt hash
    auth = Authenticator(store)                  # who is calling: what both servers check requests with

The names load on first use (PEP 562): the graphs layer screens what its searches find with
`agentstack.safety._injection`, and must not load the servers' middleware (Starlette) for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ApiKey": "agentstack.safety._keys",
    "Authenticator": "agentstack.safety._auth",
    "Caller": "agentstack.safety._auth",
    "Door": "agentstack.safety._guard",
    "Guard": "agentstack.safety._guard",
    "KeyStore": "agentstack.safety._keys",
    "NewKey": "agentstack.safety._keys",
}

__all__ = ["ApiKey", "Authenticator", "Caller", "Door", "Guard", "KeyStore", "NewKey"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.safety._auth import Authenticator, Caller
    from agentstack.safety._guard import Door, Guard
    from agentstack.safety._keys import ApiKey, KeyStore, NewKey
