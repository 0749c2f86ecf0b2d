"""The audit log: every request at the agent server's door, refused or not, by key id (never the key), written in
batches off the request path and whole at a clean stop; `agentstack audit` reads it as a table and JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
from rich.console import Console

from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraphs
from agentstack.checkpoint import PoolSaver
from agentstack.cli._keys import show_audit
from agentstack.config import Settings
from agentstack.safety import KeyStore
from agentstack.safety._audit import AuditEntry, AuditLog
from api_helpers import serving


async def test_every_request_is_recorded_by_key_id_with_the_doors_decision(
    saver: PoolSaver, agentstack_postgres: str, tmp_path: Path, capsys: object
) -> None:
    keys = KeyStore(saver.conn)
    await keys.setup()
    ana = await keys.create("ana", rpm=2)
    app = app_on(RunQueue(saver.conn), ServedGraphs([]), workers=0)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        thread = (await client.post("/threads", json={}, headers={"x-api-key": ana.secret})).json()
        await client.get(f"/threads/{thread['thread_id']}", headers={"x-api-key": ana.secret})
        await client.get(f"/threads/{thread['thread_id']}", headers={"x-api-key": ana.secret})  # over 2/min
        await client.post("/threads/search", json={})  # no key
        await client.get("/ok")  # health checks are not audited
    # the server stopped cleanly: nothing it was asked is lost, though the flush interval had not come
    entries = list(reversed(await AuditLog(saver.conn).read()))
    seen = [(e["key_id"], e["method"], e["status"], e["decision"]) for e in entries]
    assert seen == [
        (ana.key.key_id, "POST", 200, None),
        (ana.key.key_id, "GET", 200, None),
        (ana.key.key_id, "GET", 429, "rate_limited"),
        (None, "POST", 401, "unauthorized"),
    ]
    assert entries[1]["thread_id"] == thread["thread_id"] and entries[0]["thread_id"] is None
    assert all(e["server"] == "the agent server" and e["latency_ms"] >= 0 for e in entries)
    async with saver.conn.connection() as conn:
        dumped = str(await (await conn.execute("SELECT * FROM agentstack_audit")).fetchall())
    assert ana.secret not in dumped and ana.secret.split("_", 2)[2] not in dumped  # key ids only, never keys
    settings = Settings(home=tmp_path / "home", postgres_url=agentstack_postgres)
    table = Console(record=True, width=200, file=io.StringIO())
    await show_audit(settings, table, key_id=ana.key.key_id, since_s=3600, thread_id=None, limit=10, as_json=False)
    assert "rate_limited" in table.export_text() and "unauthorized" not in table.export_text()
    await show_audit(
        settings, Console(), key_id=None, since_s=None, thread_id=thread["thread_id"], limit=10, as_json=True
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # type: ignore[attr-defined]
    assert [line["status"] for line in lines] == [429, 200]


async def test_entries_are_written_in_batches_and_a_bad_path_holds_nothing_back(saver: PoolSaver) -> None:
    await KeyStore(saver.conn).setup()
    async with AuditLog(saver.conn, flush_s=3600, batch=3) as audit:
        audit.record(AuditEntry("s", None, "GET", "/threads/\x00/state", 404, 1.0))  # a NUL Postgres cannot hold
        audit.record(AuditEntry("s", "k", "GET", "/x" * 5_000, 404, 1.0))
        assert await audit.read() == []  # gathered, not written: no request waits for the audit
        audit.record(AuditEntry("s", "k", "GET", "/y", 200, 1.0))  # the third: a batch, written at once
        await asyncio.sleep(0.3)
        written = await audit.read()
        assert len(written) == 3 and {len(e["path"]) for e in written} >= {2000}
        audit.record(AuditEntry("s", "k", "GET", "/z", 200, 1.0))
    assert len(await AuditLog(saver.conn).read()) == 4  # the clean stop wrote the last one
