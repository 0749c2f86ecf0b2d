"""API keys on a real Postgres: shown once and kept only as a scrypt hash; verified, revoked, rotated and expired
as a server sees them (within its refresh interval); anything that is not a key refused as such, never a crash."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentstack.checkpoint import PoolSaver
from agentstack.errors import ConfigError, NotFoundError
from agentstack.safety import Authenticator, KeyStore
from agentstack.safety._auth import Refused, presented_key


@pytest.fixture
async def store(saver: PoolSaver) -> KeyStore:
    keys = KeyStore(saver.conn)
    await keys.setup()
    await asyncio.gather(*(KeyStore(saver.conn).setup() for _ in range(3)))  # servers starting together
    return keys


async def test_a_key_is_shown_once_and_kept_only_as_a_hash(store: KeyStore) -> None:
    made = await store.create("ci", assistants=["research"], read_only=True, rpm=60, budget_usd=5, budget_period="day")
    assert made.secret.startswith(f"ask_{made.key.key_id}_") and len(made.secret) == 4 + 12 + 1 + 43
    async with store.pool.connection() as conn:
        row = await (await conn.execute("SELECT * FROM agentstack_api_keys")).fetchone()
    secret = made.secret[len("ask_") + 12 + 1 :]  # the secret may hold "_" itself
    assert secret not in str(row.values()) and row["hash"].startswith("scrypt$16384$8$1$")
    listed = await store.list()
    assert [(k.key_id, k.assistants, k.read_only, k.rpm, k.budget_period) for k in listed] == [
        (made.key.key_id, ("research",), True, 60, "day")
    ]
    assert (await store.verify(made.key.key_id, secret)) is not None
    assert await store.verify(made.key.key_id, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None


async def test_bad_arguments_are_refused_by_name(store: KeyStore) -> None:
    with pytest.raises(ConfigError, match="a key needs a name"):
        await store.create("  ")
    with pytest.raises(ConfigError, match="--rpm is 0"):
        await store.create("x", rpm=0)
    with pytest.raises(ConfigError, match="a budget needs both"):
        await store.create("x", budget_usd=5)
    with pytest.raises(NotFoundError, match="there is no key 000000000000"):
        await store.revoke("000000000000")
    made = await store.create("x")
    await store.revoke(made.key.key_id)
    with pytest.raises(ConfigError, match="already revoked"):
        await store.revoke(made.key.key_id)
    with pytest.raises(ConfigError, match="revoked: it cannot be rotated"):
        await store.rotate(made.key.key_id)


async def test_a_server_is_open_until_the_first_key_then_asks_for_one_within_a_second(store: KeyStore) -> None:
    auth = Authenticator(store)  # the default refresh: a second
    assert await auth.caller(None) is None  # open: no key exists yet
    made = await store.create("first")
    assert await auth.caller(None) is None  # remembered for up to a second
    await asyncio.sleep(1.05)
    with pytest.raises(Refused, match="needs an API key") as missing:
        await auth.caller(None)
    assert missing.value.status == 401
    caller = await auth.caller(made.secret)
    assert caller is not None and (caller.key_id, caller.owner, caller.admin) == (
        made.key.key_id,
        made.key.key_id,
        False,
    )


async def test_a_server_others_reach_is_never_open_and_revoking_every_key_does_not_open_one(store: KeyStore) -> None:
    with pytest.raises(Refused, match="needs an API key"):
        await Authenticator(store, required=True).caller(None)  # bound beyond loopback: no key, no entry
    only = await store.create("only")
    await store.revoke(only.key.key_id)
    with pytest.raises(Refused, match="needs an API key"):
        await Authenticator(store).caller(None)
    assert await store.active() == 0


async def test_revoked_rotated_and_expired_keys_stop_working_within_a_second(store: KeyStore) -> None:
    auth = Authenticator(store, refresh_s=1.0)
    revoked, rotated, admin = [await store.create(n, admin=n == "admin") for n in ("revoked", "rotated", "admin")]
    for key in (revoked, rotated, admin):
        assert await auth.caller(key.secret) is not None  # verified once, then remembered
    assert (await auth.caller(admin.secret)).owner is None  # type: ignore[union-attr]  # an admin sees every thread
    await store.revoke(revoked.key.key_id)
    renewed = await store.rotate(rotated.key.key_id)
    await asyncio.sleep(1.05)
    with pytest.raises(Refused, match="was revoked"):
        await auth.caller(revoked.secret)
    with pytest.raises(Refused, match="is not valid"):
        await auth.caller(rotated.secret)
    assert (await auth.caller(renewed.secret)).key_id == rotated.key.key_id  # type: ignore[union-attr]
    brief = await store.create("brief", expires_in_s=0.5)
    await asyncio.sleep(0.6)
    with pytest.raises(Refused, match="has expired"):
        await auth.caller(brief.secret)


@pytest.mark.parametrize(
    "presented",
    ["", "ask_", "sk-abc", "ask_" + "g" * 12 + "_" + "a" * 43, "ask_0123456789ab_" + "a" * 42,
     "\uff41\uff53\uff4b_x", "a" * 10_000, "ask_0123456789ab_" + "\u200d" * 43],
)  # fmt: skip
async def test_anything_that_is_not_a_key_is_a_401_naming_no_secret(store: KeyStore, presented: str) -> None:
    await store.create("exists")
    auth = Authenticator(store)
    with pytest.raises(Refused) as refused:
        await auth.caller(presented)
    assert refused.value.status == 401 and (len(presented) < 8 or presented not in refused.value.message)


def test_a_key_is_read_from_either_header() -> None:
    headers: dict[str, Any] = {"x-api-key": "ask_a"}
    assert presented_key(headers) == "ask_a"
    assert presented_key({"authorization": "Bearer ask_b"}) == "ask_b"
    assert presented_key({"authorization": "Basic dXNlcjpwdw=="}) is None
    assert presented_key({"authorization": "Bearer "}) is None
    assert presented_key({}) is None
