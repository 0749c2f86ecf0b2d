"""Every failure of a library underneath reaches the caller as an agentstack error that names the part and a fix.

Each test stops or breaks a real server under a running operation.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from agentstack._net import free_port
from agentstack._structured import StructuredCall
from agentstack.errors import BackendError
from agentstack.prompts import Prompt

PROMPT = Prompt(graph="demo", name="ask", version=1, system="Answer.", user="{{ question }}")
SERVER = Path(__file__).with_name("chat_server.py")


class Answer(BaseModel):
    text: str


@contextmanager
def chat_server(mode: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port), mode], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
            time.sleep(0.05)
        yield proc, f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait()


def chat_model(base_url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=base_url, model="tiny", api_key="none", max_retries=0, timeout=30)  # type: ignore[arg-type]


async def test_a_model_server_killed_mid_request_is_a_backend_error() -> None:
    with chat_server("hang") as (proc, url):
        call = StructuredCall(chat_model(url), Answer)
        asking = asyncio.create_task(call(PROMPT, question="why?"))
        assert proc.stdout is not None
        await asyncio.to_thread(proc.stdout.readline)  # the server has the request
        proc.kill()
        with pytest.raises(BackendError, match=r"demo/ask@v1 \(model 'tiny'\) could not be reached") as caught:
            await asyncio.wait_for(asking, 30)
    assert "agentstack serve" in (caught.value.fix or "")


async def test_a_model_server_that_is_not_running_is_a_backend_error() -> None:
    call = StructuredCall(chat_model(f"http://127.0.0.1:{free_port()}/v1"), Answer)
    with pytest.raises(BackendError, match="could not be reached"):
        await call(PROMPT, question="why?")


async def test_a_model_server_error_reply_is_a_backend_error_with_its_status() -> None:
    with chat_server("error") as (_proc, url):
        call = StructuredCall(chat_model(url), Answer)
        with pytest.raises(BackendError, match=r"HTTP 500: .*out of memory"):
            await call(PROMPT, question="why?")
