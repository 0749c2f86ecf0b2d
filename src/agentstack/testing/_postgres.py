"""A throwaway PostgreSQL server for a test session, with a fresh database per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentstack.checkpoint import LocalPostgres

__all__ = ["TestPostgres"]

# Durability is not what a test session measures; skipping fsync makes CREATE DATABASE and
# every commit several times faster. Crash safety itself is tested with the real defaults.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class TestPostgres:
    """One real server under `root`; `create_database()` hands each test its own database."""

    __test__ = False  # not a test class, whatever pytest's name matching thinks

    def __init__(self, root: Path) -> None:
        self.server = LocalPostgres(root, server_settings=_FAST_SETTINGS)
        self._admin_url: str | None = None

    def start(self) -> str:
        url = self.server.start()
        self._admin_url = make_conninfo(url, dbname="postgres")
        return url

    def create_database(self) -> str:
        """Create an empty database and return its URL."""
        assert self._admin_url is not None, "start() the server first"
        name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self._url_of(name)

    def drop_database(self, url: str) -> None:
        assert self._admin_url is not None
        name = conninfo_to_dict(url)["dbname"]
        with psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _url_of(self, dbname: str) -> str:
        info = conninfo_to_dict(self._admin_url or "")
        return f"postgresql://{info['user']}:{info['password']}@{info['host']}:{info['port']}/{dbname}"

    def destroy(self) -> None:
        self.server.destroy()
