"""Child processes get an allow-listed environment: secrets planted in ours never reach them.

Each real child (a llama-server replica, the fleet's watchdog, the embedded Postgres) is read back from
/proc/<pid>/environ while it runs. redis-server (FalkorDB) writes its process title over that area and keeps
its environment on the heap, so its memory is searched instead (we run as root in CI; other users may not).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentstack._child_env import child_env
from agentstack.checkpoint import LocalPostgres
from agentstack.rag._falkordb_server import LocalFalkorDB
from agentstack.serving import Fleet
from fleet_helpers import tiny_spec

SECRETS = {
    "OPENAI_API_KEY": "sk-planted",
    "COHERE_API_KEY": "co-planted",
    "AGENTSTACK_POSTGRES_URL": "postgresql://agent:pw-planted@db.invalid:5432/agents",
    "AGENTSTACK_LLM_API_KEY": "llm-planted",
    "PGPASSWORD": "pg-planted",
    "AWS_SECRET_ACCESS_KEY": "aws-planted",
}


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HOME", "/tmp/hf-home-kept")  # an allow-listed runtime variable
    yield


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def assert_clean(env: dict[str, str]) -> None:
    leaked = {name for name, value in env.items() if "planted" in value} | (set(SECRETS) & set(env))
    assert not leaked, f"secrets reached a child process: {sorted(leaked)}"
    assert env.get("PATH"), "a child needs PATH"


def test_the_allow_list_keeps_runtime_variables_and_adds_the_callers(planted: None) -> None:
    parent = {**SECRETS, "PATH": "/bin", "LC_ALL": "C.UTF-8", "CUDA_HOME": "/cuda", "HF_TOKEN": "hf", "X": "1"}
    env = child_env({"CUDA_VISIBLE_DEVICES": "0", "MY_FLAG": "on"}, model_server=True, parent=parent)
    assert env == {
        "PATH": "/bin",
        "LC_ALL": "C.UTF-8",
        "CUDA_HOME": "/cuda",
        "HF_TOKEN": "hf",  # the hub credential a model server downloads gated weights with
        "CUDA_VISIBLE_DEVICES": "0",
        "MY_FLAG": "on",
    }
    # Postgres, FalkorDB and the watchdog need no GPU, no hub and no hub token.
    assert child_env({"LC_ALL": "C"}, parent=parent) == {"PATH": "/bin", "LC_ALL": "C"}
    assert_clean(child_env())  # this process's own environment, with the secrets planted
    assert_clean(child_env(model_server=True))


@pytest.mark.slow
@pytest.mark.allow_model_requests  # the fleet's canary asks the real model
async def test_a_replica_and_the_watchdog_get_no_secrets(planted: None, fleet_home: Path) -> None:
    spec = tiny_spec(replicas=1, env={"AGENTSTACK_TEST_SPEC_ENV": "from-the-spec"}, fleet={"canary": False})
    async with Fleet(spec, home=fleet_home, scrape_interval_s=None) as fleet:
        replica = fleet.replicas[0]
        assert replica.pid is not None
        server = environ_of(replica.pid)
        watchdog = environ_of(fleet._watchdog._proc.pid)  # type: ignore[union-attr]
    assert_clean(server)
    assert server["AGENTSTACK_TEST_SPEC_ENV"] == "from-the-spec"  # the spec's env
    assert server["CUDA_VISIBLE_DEVICES"] == ""  # the placement's: a CPU replica sees no GPU
    assert server["HF_HOME"] == "/tmp/hf-home-kept"
    assert_clean(watchdog)
    assert "HF_HOME" not in watchdog  # only model servers get the hub's variables


@pytest.mark.slow
def test_the_embedded_postgres_gets_no_secrets(planted: None, tmp_path: Path) -> None:
    server = LocalPostgres(tmp_path / "home", server_settings={"fsync": "off"})
    try:
        server.start()
        pid = server.status().pid
        assert pid is not None
        env = environ_of(pid)
    finally:
        server.destroy()
    assert_clean(env)
    assert env["LC_ALL"] == "C"


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether `needle` is in the heap or stack of process `pid` (where redis-server keeps its environment)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] not in ("[heap]", "[stack]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except OSError:  # a region that went away or cannot be read
                continue
    return False


@pytest.mark.slow
def test_falkordb_gets_no_secrets(planted: None, tmp_path: Path) -> None:
    server = LocalFalkorDB(tmp_path)
    try:
        server.start()
        pid = int((tmp_path / "falkordb" / "server.pid").read_text())
        assert memory_holds(pid, f"PATH={child_env()['PATH']}".encode())  # found where the environment lives
        leaked = [name for name, value in SECRETS.items() if memory_holds(pid, value.encode())]
    finally:
        server.stop()
    assert not leaked, f"secrets reached FalkorDB: {leaked}"
