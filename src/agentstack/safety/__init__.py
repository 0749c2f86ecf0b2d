"""Safety at the door of the agent server and the model gateway: API keys (hashed in Postgres), who is calling,
and what each key may do. See docs/safety.md.

    store = KeyStore(pool)                       # a psycopg async pool: open_pool(url)
    await store.setup()
    made = await store.create("ci", assistants=["research"], read_only=True)
    print(made.secret)                           # shown once; Postgres keeps only a scrypt hash
    auth = Authenticator(store)                  # who is calling: what both servers check requests with
"""

from __future__ import annotations

from agentstack.safety._auth import Authenticator, Caller
from agentstack.safety._guard import Door, Guard
from agentstack.safety._keys import ApiKey, KeyStore, NewKey

__all__ = ["ApiKey", "Authenticator", "Caller", "Door", "Guard", "KeyStore", "NewKey"]
