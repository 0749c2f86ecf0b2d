"""API keys in Postgres: created and shown once, kept only as a scrypt hash, listed, revoked, rotated.

A key reads `ask_<key id>_<secret>`: the id (12 hex digits) is public, names the key in lists and in the audit,
and finds its row; the secret (32 random bytes, URL-safe base64) is checked against the row's scrypt hash
(n=2^14, r=8, p=1, a salt of its own) with a constant-time compare. scrypt costs tens of milliseconds by design,
so a server verifies a key once and then remembers its SHA-256 (`_auth.Authenticator`).

Each key may be limited: `assistants` (the graphs it may run and see; None: all), `read_only` (it reads, never
writes), `admin` (it sees every caller's threads), an expiry, and the usage limits the servers enforce (`rpm`,
`tpm`, `max_runs` unfinished at once, a budget in USD per period). `version` grows with every rotation and
revocation, so a server that remembered a key notices within its refresh interval.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from agentstack._pg_migrations import apply_migrations
from agentstack.errors import ConfigError, NotFoundError

__all__ = ["ApiKey", "KeyStore", "NewKey", "parse_key"]

_PREFIX = "ask"
_KEY = re.compile(rf"^{_PREFIX}_(?P<id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_SETUP_LOCK = 0x61676E746B657973  # "agntkeys"

MIGRATIONS: tuple[str, ...] = (
    """CREATE TABLE agentstack_api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    admin BOOLEAN NOT NULL DEFAULT false,
    read_only BOOLEAN NOT NULL DEFAULT false,
    assistants JSONB,
    rpm INTEGER,
    tpm INTEGER,
    budget_usd NUMERIC,
    budget_period TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
)""",
    # `_limits.Limiter`: per key and limit, the GCRA's theoretical arrival time of the next request.
    """CREATE TABLE agentstack_rate_limits (
    key_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    tat TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (key_id, kind)
)""",
    # `_audit.AuditLog`: every request at the door of either server.
    """CREATE TABLE agentstack_audit (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    server TEXT NOT NULL,
    key_id TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    thread_id TEXT,
    run_id TEXT,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    decision TEXT
)""",
    "CREATE INDEX agentstack_audit_at ON agentstack_audit (at)",
    "CREATE INDEX agentstack_audit_key ON agentstack_audit (key_id, at)",
    "CREATE INDEX agentstack_audit_thread ON agentstack_audit (thread_id, at)",
    "ALTER TABLE agentstack_audit ADD COLUMN findings JSONB",  # personal data found, by kind (never the values)
    "ALTER TABLE agentstack_audit ADD COLUMN tokens INTEGER",  # what the model used for the request (gateway)
    "ALTER TABLE agentstack_api_keys ADD COLUMN max_runs INTEGER",  # runs unfinished at once (agent server)
    # `_limits.Spend`: what each key spent in each period of its budget.
    """CREATE TABLE agentstack_spend (
    key_id TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    usd NUMERIC NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period_start)
)""",
    "ALTER TABLE agentstack_audit ADD COLUMN cost_usd DOUBLE PRECISION",
    # `KeyStore.secret`: random keys every server on the database shares (the agent server's PII placeholders).
    "CREATE TABLE agentstack_secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
)


@dataclass(frozen=True)
class ApiKey:
    """A key as stored, without its secret."""

    key_id: str
    name: str
    version: int
    admin: bool
    read_only: bool
    assistants: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    max_runs: int | None
    budget_usd: float | None
    budget_period: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class NewKey:
    """A key just made: `secret` is the whole key, shown to its owner once and never stored."""

    key: ApiKey
    secret: str


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key; None for anything else (never an error naming what was sent)."""
    found = _KEY.match(presented.strip())
    return (found["id"], found["secret"]) if found else None


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def secret_matches(secret: str, stored: str) -> bool:
    """Whether `secret` hashes to `stored` (the parameters and salt it was made with), in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        raw_salt = base64.urlsafe_b64decode(salt + "==")
        got = hashlib.scrypt(secret.encode(), salt=raw_salt, n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


class KeyStore:
    """The keys of one database, on a psycopg async pool (autocommit, dict rows: `open_pool`)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def setup(self) -> None:
        async with self.pool.connection() as conn:
            await apply_migrations(
                conn, table="agentstack_key_migrations", lock=_SETUP_LOCK, migrations=MIGRATIONS, what="the API keys"
            )

    async def create(
        self,
        name: str,
        *,
        admin: bool = False,
        read_only: bool = False,
        assistants: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_runs: int | None = None,
        budget_usd: float | None = None,
        budget_period: str | None = None,
        expires_in_s: float | None = None,
    ) -> NewKey:
        """A new key; its secret is in the result only."""
        if not name.strip():
            raise ConfigError("a key needs a name", fix="--name NAME: who or what uses it")
        for label, value in (("--rpm", rpm), ("--tpm", tpm), ("--max-runs", max_runs), ("--budget", budget_usd)):
            if value is not None and value <= 0:
                raise ConfigError(f"{label} is {value}: nothing would be allowed", fix=f"leave {label} out: no limit")
        if (budget_usd is None) != (budget_period is None):
            raise ConfigError("a budget needs both an amount and a period", fix="--budget 20/day (or /week, /month)")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    """INSERT INTO agentstack_api_keys
    (key_id, name, hash, admin, read_only, assistants, rpm, tpm, max_runs, budget_usd, budget_period, expires_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING *""",
                    (
                        key_id,
                        name.strip(),
                        hash_secret(secret),
                        admin,
                        read_only,
                        Jsonb(list(assistants)) if assistants is not None else None,
                        rpm,
                        tpm,
                        max_runs,
                        budget_usd,
                        budget_period,
                        expires_in_s,
                    ),
                )
            ).fetchone()
        return NewKey(_key(row), f"{_PREFIX}_{key_id}_{secret}")

    async def secret(self, name: str) -> bytes:
        """The database's random secret `name`, made by whichever server asks first (32 bytes): the same on every
        worker, never sent to a client."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO agentstack_secrets (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, secrets.token_bytes(32)),
            )
            row = await (await conn.execute("SELECT value FROM agentstack_secrets WHERE name = %s", (name,))).fetchone()
        return bytes(row["value"])

    async def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        async with self.pool.connection() as conn:
            found = await conn.execute(f"SELECT * FROM agentstack_api_keys {where} ORDER BY created_at")
            rows = await found.fetchall()
        return [_key(r) for r in rows]

    async def get(self, key_id: str) -> ApiKey:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT * FROM agentstack_api_keys WHERE key_id = %s", (key_id,))
            ).fetchone()
        if row is None:
            raise NotFoundError(f"there is no key {key_id}", fix="list them with: agentstack keys list")
        return _key(row)

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once (servers stop accepting it within their refresh interval, a second)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE agentstack_api_keys SET revoked_at = now(), version = version + 1 "
                    "WHERE key_id = %s AND revoked_at IS NULL RETURNING *",
                    (key_id,),
                )
            ).fetchone()
        if row is None:
            await self.get(key_id)  # missing: NotFoundError; else it was revoked already
            raise ConfigError(f"key {key_id} is already revoked", fix="create a new one: agentstack keys create")
        return _key(row)

    async def rotate(self, key_id: str) -> NewKey:
        """A new secret for the same key (its id, limits and threads stay); the old secret stops working."""
        secret = secrets.token_urlsafe(32)
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "UPDATE agentstack_api_keys SET hash = %s, version = version + 1 "
                    "WHERE key_id = %s AND revoked_at IS NULL RETURNING *",
                    (hash_secret(secret), key_id),
                )
            ).fetchone()
        if row is None:
            await self.get(key_id)
            raise ConfigError(f"key {key_id} is revoked: it cannot be rotated", fix="create a new one")
        return NewKey(_key(row), f"{_PREFIX}_{key_id}_{secret}")

    async def verify(self, key_id: str, secret: str) -> ApiKey | None:
        """The key whose id and secret these are, whatever its state (the caller checks `active`); None if the
        id is unknown or the secret wrong."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT * FROM agentstack_api_keys WHERE key_id = %s", (key_id,))
            ).fetchone()
        # scrypt takes tens of milliseconds on purpose: off the event loop, so a flood of wrong secrets slows only
        # itself, not the server's other requests
        if row is None or not await asyncio.to_thread(secret_matches, secret, row["hash"]):
            return None
        return _key(row)

    async def active(self) -> int:
        """How many keys work now (neither revoked nor expired)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT count(*) AS n FROM agentstack_api_keys "
                    "WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
                )
            ).fetchone()
        return int(row["n"])

    async def state(self, key_ids: Sequence[str]) -> tuple[int, dict[str, int]]:
        """How many keys were ever made (revoked ones too: once keys are in use a server stays closed), and the
        current version of each of `key_ids` (absent: deleted)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    """SELECT
    (SELECT count(*) FROM agentstack_api_keys) AS made,
    (SELECT coalesce(jsonb_object_agg(key_id, version), '{}') FROM agentstack_api_keys
     WHERE key_id = ANY(%s)) AS versions""",
                    (list(key_ids),),
                )
            ).fetchone()
        return int(row["made"]), {str(k): int(v) for k, v in row["versions"].items()}


def _key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        version=int(row["version"]),
        admin=bool(row["admin"]),
        read_only=bool(row["read_only"]),
        assistants=tuple(row["assistants"]) if row["assistants"] is not None else None,
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_runs=row.get("max_runs"),
        budget_usd=float(row["budget_usd"]) if row["budget_usd"] is not None else None,
        budget_period=row["budget_period"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
