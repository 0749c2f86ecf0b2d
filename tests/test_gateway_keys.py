"""The model gateway with API keys, called with the real `openai` client: open until a key exists, then a key
in `Authorization: Bearer` is needed (OpenAI-shaped 401 as `openai` raises it), `/health` stays open and
`/metrics` is for admin keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from agentstack.checkpoint import PoolSaver
from agentstack.safety import Authenticator, KeyStore
from agentstack.safety._gateway_policy import GatewayPolicy
from agentstack.serving import Fleet, FleetSpec, gateway_app
from api_helpers import serving
from stub_backend import stub_server


@pytest.mark.allow_model_requests  # the stub server answers the chat completions
async def test_the_gateway_asks_for_a_key_once_one_exists(saver: PoolSaver, tmp_path: Path) -> None:
    keys = KeyStore(saver.conn)
    await keys.setup()
    auth = Authenticator(keys, refresh_s=0.2)
    body = {"model": "stub-chat", "messages": [{"role": "user", "content": "hi"}]}
    with stub_server() as (_proc, stub_url):
        spec = FleetSpec.from_data(
            {"models": [{"name": "stub-chat", "backend": "external", "urls": [f"{stub_url}/v1"]}], "canary": False}
        )
        async with Fleet(spec, home=tmp_path) as fleet, serving(gateway_app(fleet, GatewayPolicy.create(auth))) as url:
            anyone = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
            assert (await anyone.chat.completions.create(**body)).choices  # open: no key exists yet
            user, admin = await keys.create("app"), await keys.create("ops", admin=True)
            await asyncio.sleep(0.25)
            with pytest.raises(openai.AuthenticationError, match="is not one of this server's") as refused:
                await anyone.chat.completions.create(**body)
            assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
            keyed = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=user.secret)
            assert (await keyed.chat.completions.create(**body)).choices
            assert [m.id for m in (await keyed.models.list()).data] == ["stub-chat"]
            async with httpx.AsyncClient(base_url=url) as raw:
                assert (await raw.get("/health")).status_code == 200
                forbidden = await raw.get("/metrics", headers={"authorization": f"Bearer {user.secret}"})
                assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "permission_denied"
                allowed = await raw.get("/metrics", headers={"authorization": f"Bearer {admin.secret}"})
                assert allowed.status_code == 200
            await keys.revoke(user.key.key_id)
            await asyncio.sleep(0.25)
            with pytest.raises(openai.AuthenticationError, match="was revoked"):
                await keyed.chat.completions.create(**body)
