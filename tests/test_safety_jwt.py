"""Callers with a JWT from an identity provider: HS256 with a secret and RS256 with a JWKS file, expiry, audience
and issuer checked, `sub` the caller that owns its threads, and every flaw a 401 naming it, never the token."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraphs
from agentstack.checkpoint import PoolSaver
from agentstack.errors import ConfigError
from agentstack.safety import Authenticator, KeyStore
from agentstack.safety._auth import Refused
from agentstack.safety._jwt import JwtVerifier
from api_helpers import serving

SECRET = "a-shared-secret-of-at-least-32-bytes!!"


def token(sub: str = "ana", *, key: Any = SECRET, algorithm: str = "HS256", ttl: float = 60, **claims: Any) -> str:
    headers = claims.pop("headers", None)
    body = {"sub": sub, "exp": int(time.time() + ttl), "aud": "agents", "iss": "https://idp.example", **claims}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def test_an_hs256_token_names_its_caller_and_each_flaw_is_a_401() -> None:
    verifier = JwtVerifier(secret=SECRET, audience="agents", issuer="https://idp.example")
    caller = verifier.caller(token(agentstack_assistants=["research"], agentstack_read_only=True))
    assert (caller.key_id, caller.owner, caller.assistants, caller.read_only) == (
        "jwt:ana",
        "jwt:ana",
        ("research",),
        True,
    )
    flaws = {
        "has expired": token(ttl=-120),
        "is not for this server": token(aud="someone-else"),
        "was not issued by": token(iss="https://other.example"),
        "signature does not verify": token(key="another-secret-of-at-least-32-bytes!!"),
        "no 'sub' claim": jwt.encode(
            {"exp": int(time.time()) + 60, "aud": "agents", "iss": "https://idp.example"}, SECRET
        ),
        "not a valid JWT": "eyJhbGciOiJIUzI1NiJ9.eyJub3QiOiJqc29u.bad",
        "are not accepted here": token(key="", algorithm="none"),
    }
    for said, bad in flaws.items():
        with pytest.raises(Refused, match=said) as refused:
            verifier.caller(bad)
        assert refused.value.status == 401 and bad not in refused.value.message


def test_an_rs256_token_is_checked_against_the_key_set_by_its_kid(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    verifier = JwtVerifier(jwks_file=tmp_path / "jwks.json", audience="agents")
    assert verifier.caller(token("bo", key=private, algorithm="RS256", headers={"kid": "k1"})).key_id == "jwt:bo"
    with pytest.raises(Refused, match="no key 'k2'"):
        verifier.caller(token("bo", key=private, algorithm="RS256", headers={"kid": "k2"}))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as a key set"):
        JwtVerifier(jwks_file=tmp_path / "broken.json")


async def test_the_agent_server_with_tokens_is_never_open_and_each_sub_owns_its_threads(saver: PoolSaver) -> None:
    await KeyStore(saver.conn).setup()  # no API key at all: the tokens alone close the server
    verifier = JwtVerifier(secret=SECRET, audience="agents")
    async with serving(app_on(RunQueue(saver.conn), ServedGraphs([]), workers=0, jwt=verifier)) as url:
        async with httpx.AsyncClient(base_url=url) as anyone:
            assert (await anyone.post("/threads/search", json={})).status_code == 401
        ana = get_client(url=url, headers={"Authorization": f"Bearer {token('ana')}"})
        bo = get_client(url=url, headers={"Authorization": f"Bearer {token('bo')}"})
        thread = await ana.threads.create()
        assert [t["thread_id"] for t in await ana.threads.search()] == [thread["thread_id"]]
        assert await bo.threads.search() == []
        with pytest.raises(NotFoundError):
            await bo.threads.get(thread["thread_id"])
    assert Authenticator(KeyStore(saver.conn), jwt=verifier).required
