"""The embedded PostgreSQL server: idempotent, concurrent-safe, crash-tolerant, clear when broken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from agentstack.checkpoint import LocalPostgres
from agentstack.checkpoint._local_postgres import find_postgres_binaries
from agentstack.errors import MissingDependencyError, PostgresServerError

pytestmark = pytest.mark.slow  # each test initialises and starts a real cluster


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres(tmp_path / "home", server_settings={"fsync": "off"})
    try:
        yield server
    finally:
        server.destroy()


def _query(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


def test_start_is_idempotent_and_data_survives_restart(postgres: LocalPostgres) -> None:
    url = postgres.start()
    assert postgres.start() == url
    pid = postgres.status().pid
    assert postgres.start() == url and postgres.status().pid == pid  # still one server
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('hello')")
    assert postgres.stop() is True
    assert postgres.stop() is False
    assert not postgres.status().running
    url_again = postgres.start()
    assert url_again == url  # same port when it is still free: the URL is stable
    assert _query(url_again, "SELECT v FROM kept") == "hello"


def test_password_is_required(postgres: LocalPostgres) -> None:
    url = postgres.start()
    wrong = url.replace(url.split(":")[2].split("@")[0], "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong)


def test_two_processes_starting_at_once_get_one_server(postgres: LocalPostgres) -> None:
    code = (
        "import sys; from agentstack.checkpoint import LocalPostgres; "
        "print(LocalPostgres(sys.argv[1], server_settings={'fsync': 'off'}).start())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(postgres.home)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    urls = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(urls) == 1
    assert _query(urls.pop(), "SELECT 1") == 1


def test_recovers_from_a_server_killed_with_sigkill(postgres: LocalPostgres) -> None:
    url = postgres.start()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survived (v int)")
        conn.execute("INSERT INTO survived VALUES (42)")
    pid = postgres.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while postgres.status().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (postgres.data_dir / "postmaster.pid").exists()  # the stale pid file is still there
    url = postgres.start()
    assert _query(url, "SELECT v FROM survived") == 42
    assert postgres.status().pid != pid


def test_busy_configured_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = LocalPostgres(tmp_path / "home", port=port)
        try:
            with pytest.raises(PostgresServerError, match=f"port {port} on 127.0.0.1 is in use") as info:
                server.start()
            assert "AGENTSTACK_POSTGRES_PORT" in str(info.value)
        finally:
            server.destroy()


def test_corrupt_data_dir_is_a_clear_error_and_is_left_alone(postgres: LocalPostgres) -> None:
    postgres.start()
    postgres.stop()
    (postgres.data_dir / "PG_VERSION").unlink()
    with pytest.raises(PostgresServerError, match="not a PostgreSQL data directory") as info:
        postgres.start()
    assert "mv " in str(info.value)
    assert (postgres.data_dir / "base").is_dir()  # nothing was deleted


def test_damaged_cluster_reports_the_server_log(postgres: LocalPostgres) -> None:
    postgres.start()
    postgres.stop()
    (postgres.data_dir / "global" / "pg_control").write_bytes(b"garbage")
    with pytest.raises(PostgresServerError, match="did not start") as info:
        postgres.start()
    assert "last log lines" in str(info.value) and "broken" in str(info.value)


def test_missing_server_binaries_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="apt-get install postgresql"):
        find_postgres_binaries(tmp_path)
    server = LocalPostgres(tmp_path / "home", bin_dir=tmp_path / "nowhere")
    with pytest.raises(MissingDependencyError, match="AGENTSTACK_POSTGRES_BIN_DIR"):
        server.start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the server to run as another user")
def test_as_root_the_server_runs_unprivileged(postgres: LocalPostgres) -> None:
    url = postgres.start()
    assert _query(url, "SELECT current_setting('data_directory')") == str(postgres.data_dir)
    owner = Path(f"/proc/{postgres.status().pid}").stat().st_uid
    assert owner != 0
