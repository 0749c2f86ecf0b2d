"""A private PostgreSQL cluster that agentstack initialises and runs itself.

With no `postgres_url` configured, checkpoints still go to a real Postgres: the system's
server binaries run a cluster under `<home>/pg`, reachable on 127.0.0.1 with a generated
password. The server outlives the Python process on purpose (it is the durable store a
killed agent resumes from); `stop()` or `agentstack db stop` ends it.

Why the details below exist:
- PostgreSQL refuses to run as root, so when we are root the server runs as the
  `postgres` (or `nobody`) user. If that user cannot reach `<home>` (root's home is
  mode 0700), the cluster lives under /var/lib/agentstack and `<home>/pg` is a symlink to
  it: we never loosen permissions on a directory the user owns.
- Start, stop and init take an exclusive file lock, so two processes that start the
  server at once get one server.
- initdb writes into a temporary directory that is renamed into place only when it is
  complete, so a crash during init never leaves a half-made cluster behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from agentstack._child_env import child_env
from agentstack._net import free_port
from agentstack.config import Settings
from agentstack.errors import MissingDependencyError, PostgresServerError

__all__ = ["LocalPostgres", "PostgresStatus", "find_postgres_binaries"]

log = logging.getLogger(__name__)

_USER = "agentstack"
_DATABASE = "agentstack"
_RELOCATED_BASE = Path("/var/lib/agentstack")
_BINARIES = ("initdb", "pg_ctl", "postgres")
_INSTALL_FIX = (
    "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql; macOS: brew install "
    "postgresql), or set AGENTSTACK_POSTGRES_BIN_DIR to the directory holding initdb and pg_ctl, "
    "or set AGENTSTACK_POSTGRES_URL to use an existing server"
)


@dataclass(frozen=True)
class PostgresStatus:
    """What `LocalPostgres.status()` found."""

    running: bool
    data_dir: Path
    initialised: bool
    pid: int | None
    port: int | None
    url: str | None


def find_postgres_binaries(bin_dir: Path | None = None) -> Path:
    """Return the directory that holds initdb, pg_ctl and postgres, or explain how to get them."""
    candidates: list[Path] = []
    if bin_dir is not None:
        candidates.append(bin_dir)
    else:
        found = shutil.which("pg_ctl")
        if found:
            candidates.append(Path(found).resolve().parent)
        versions = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates.extend(versions)
    for directory in candidates:
        if all((directory / name).is_file() for name in _BINARIES):
            return directory
    where = str(bin_dir) if bin_dir else "PATH or /usr/lib/postgresql/*/bin"
    raise MissingDependencyError(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in {where}", fix=_INSTALL_FIX
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class LocalPostgres:
    """Initialise, start, stop and locate a private PostgreSQL cluster.

    All methods are idempotent and safe to call from several processes at once. The
    blocking methods have `a`-prefixed async twins that run them in a worker thread.
    """

    def __init__(
        self,
        home: Path,
        *,
        port: int = 0,
        bin_dir: Path | None = None,
        server_settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.requested_port = port
        self._bin_dir = bin_dir
        self.server_settings = {"max_connections": "300", **(server_settings or {})}
        self.start_timeout = start_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalPostgres:
        return cls(settings.home, port=settings.postgres_port, bin_dir=settings.postgres_bin_dir)

    # -- paths -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """`<home>/pg`, resolved: the server user may not be allowed through a symlink in `<home>`."""
        return (self.home / "pg").resolve()

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "postgres.log"

    @property
    def _password_file(self) -> Path:
        return self.root / "password"

    @property
    def _port_file(self) -> Path:
        return self.root / "port"

    def _bin(self, name: str) -> str:
        return str(find_postgres_binaries(self._bin_dir) / name)

    # -- public API --------------------------------------------------------------------
    def start(self) -> str:
        """Make sure the server runs (initialising the cluster on first use); return its URL."""
        with self._locked():
            if not self._is_initialised():
                self._init_cluster()
            self._check_data_dir()
            if self._server_pid() is None:
                self._start_server()
                self._create_database(_DATABASE)  # also repairs an init that died before this step
            return self._url()

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop the server if it runs (fast shutdown: sessions end, data is flushed). True if it ran."""
        with self._locked():
            if self._server_pid() is None:
                return False
            result = self._run(
                [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
                check=False,
            )
            if result.returncode != 0 and self._server_pid() is not None:
                raise PostgresServerError(
                    f"the embedded PostgreSQL server did not stop: {result.stderr.strip()}",
                    fix=f"look at {self.log_file}, or end it with: kill -INT {self._server_pid()}",
                )
            return True

    def status(self) -> PostgresStatus:
        """Describe the cluster without changing anything."""
        initialised = self._is_initialised()
        pid = self._server_pid() if initialised else None
        port = self._read_port() if pid is not None else None
        return PostgresStatus(
            running=pid is not None,
            data_dir=self.data_dir,
            initialised=initialised,
            pid=pid,
            port=port,
            url=self._url() if pid is not None else None,
        )

    def destroy(self) -> None:
        """Stop the server and delete the cluster and everything in it (tests, `db` resets)."""
        self.stop()
        with self._locked():
            link = self.home / "pg"
            target = self.root
            shutil.rmtree(target, ignore_errors=True)
            if link.is_symlink():
                link.unlink()

    @property
    def url(self) -> str:
        """The URL of the running server; raises if it is not running."""
        if self._server_pid() is None:
            raise PostgresServerError("the embedded PostgreSQL server is not running", fix="run `agentstack db start`")
        return self._url()

    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> bool:
        return await asyncio.to_thread(self.stop)

    # -- users and permissions ---------------------------------------------------------
    def _server_user(self) -> pwd.struct_passwd | None:
        """The account the server runs as when we are root; None means ourselves."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise PostgresServerError(
            "running as root, and neither a 'postgres' nor a 'nobody' user exists to run the server",
            fix="create one (useradd --system postgres), or run agentstack as an ordinary user",
        )

    def _user_kwargs(self) -> dict[str, object]:
        user = self._server_user()
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _run(self, argv: list[str], *, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
        env = child_env({"LC_ALL": "C", "LANG": "C"})  # no PGDATA, PGPASSWORD or keys of ours
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            **self._user_kwargs(),
            **kwargs,  # type: ignore[arg-type]
        )
        if check and result.returncode != 0:
            output = result.stderr.strip() or result.stdout.strip()
            raise PostgresServerError(
                f"{Path(argv[0]).name} failed (exit {result.returncode}): {output}",
                fix=f"see {self.log_file} for the server's own log",
            )
        return result

    def _prepare_root(self) -> None:
        """Create `<home>/pg`, relocating it when the server user cannot reach `<home>`."""
        self.home.mkdir(parents=True, exist_ok=True)
        user = self._server_user()
        link = self.home / "pg"
        if link.exists() or link.is_symlink():
            return
        if user is None or self._reachable_by(user, self.home):
            link.mkdir(mode=0o700)
        else:
            digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
            target = _RELOCATED_BASE / f"pg-{digest}"
            _RELOCATED_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.mkdir(mode=0o700, exist_ok=True)
            link.symlink_to(target)
            log.info("%s is not reachable by user %s; cluster lives in %s", self.home, user.pw_name, target)
        if user is not None:
            os.chown(self.root, user.pw_uid, user.pw_gid)

    @staticmethod
    def _reachable_by(user: pwd.struct_passwd, directory: Path) -> bool:
        probe = subprocess.run(
            ["/bin/sh", "-c", 'cd "$1"', "sh", str(directory)],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            capture_output=True,
            check=False,
            env=child_env(),
        )
        return probe.returncode == 0

    def _make_server_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        user = self._server_user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "pg.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- cluster -----------------------------------------------------------------------
    def _is_initialised(self) -> bool:
        return self.data_dir.is_dir()

    def _init_cluster(self) -> None:
        self._prepare_root()
        password = secrets.token_hex(16)
        self._password_file.write_text(password)
        self._password_file.chmod(0o600)
        staging = self.root / f"data.init-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        self._make_server_dir(staging)
        pwfile = self.root / f"pwfile-{os.getpid()}"
        pwfile.write_text(password + "\n")
        user = self._server_user()
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        pwfile.chmod(0o600)
        try:
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(staging),
                    "-U",
                    _USER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            )
        except PostgresServerError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            pwfile.unlink(missing_ok=True)
        with open(staging / "postgresql.conf", "a") as conf:
            conf.write("\n# agentstack writes its own settings here at every start\n")
            conf.write("include_if_exists = 'agentstack.conf'\n")
        staging.rename(self.data_dir)
        self._make_server_dir(self.root / "log")
        self._make_server_dir(self.root / "run")

    def _check_data_dir(self) -> None:
        version_file = self.data_dir / "PG_VERSION"
        fix = (
            f"if nothing in it matters, move it aside (mv {self.data_dir} {self.data_dir}.broken) and "
            "run again to create a fresh cluster"
        )
        if not version_file.is_file():
            raise PostgresServerError(f"{self.data_dir} is not a PostgreSQL data directory (no PG_VERSION)", fix=fix)
        cluster_version = version_file.read_text().strip()
        out = self._run([self._bin("postgres"), "--version"]).stdout
        server_major = out.split()[-1].split(".")[0] if out else "?"
        if cluster_version != server_major:
            raise PostgresServerError(
                f"{self.data_dir} was created by PostgreSQL {cluster_version}, but the server binaries are "
                f"version {server_major}",
                fix=f"point AGENTSTACK_POSTGRES_BIN_DIR at PostgreSQL {cluster_version}'s binaries, or {fix}",
            )

    # -- server ------------------------------------------------------------------------
    def _server_pid(self) -> int | None:
        """PID of a live postmaster for our data dir (a stale pid file counts as not running)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by the server user
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid  # no /proc (macOS): trust the live pid
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return None  # a killed postmaster nobody has reaped yet
        return pid if b"postgres" in cmdline or b"postmaster" in cmdline else None

    def _read_port(self) -> int | None:
        try:
            return int(self._port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _choose_port(self) -> int:
        if self.requested_port:
            if not _port_is_free(self.requested_port):
                raise PostgresServerError(
                    f"port {self.requested_port} on 127.0.0.1 is in use by another program",
                    fix="set AGENTSTACK_POSTGRES_PORT to a free port, or to 0 to let agentstack pick one",
                )
            return self.requested_port
        previous = self._read_port()
        if previous and _port_is_free(previous):
            return previous  # keep the URL stable across restarts when we can
        return free_port()

    def _write_server_conf(self, port: int) -> None:
        settings = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root / 'run'}'",
            **{k: f"'{v}'" for k, v in self.server_settings.items()},
        }
        conf = self.data_dir / "agentstack.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        user = self._server_user()
        if user is not None:
            os.chown(conf, user.pw_uid, user.pw_gid)

    def _remove_stale_pid_file(self) -> None:
        """A postmaster killed with SIGKILL leaves its pid file; postgres trusts a zombie's pid.

        The file is removed only once no process works in the data directory any more, since
        it is also what stops a second postmaster from running beside orphaned backends.
        """
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            self._wait_for_orphans()
            log.info("removing stale %s left by a server that was killed", pid_file)
            pid_file.unlink(missing_ok=True)
            for socket_lock in (self.root / "run").glob(".s.PGSQL.*.lock"):
                socket_lock.unlink(missing_ok=True)

    def _start_server(self, attempts: int = 3) -> None:
        self._remove_stale_pid_file()
        for attempt in range(1, attempts + 1):
            port = self._choose_port()
            self._write_server_conf(port)
            self._port_file.write_text(str(port))
            result = self._run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                    "start",
                ],
                check=False,
                start_new_session=True,  # the server must not die with our terminal or process group
            )
            if result.returncode == 0:
                return
            tail = self._log_tail()
            if "Address already in use" in tail and not self.requested_port and attempt < attempts:
                continue  # lost a race for the port we picked: pick another
            if "shared memory block" in tail and "still in use" in tail and attempt < attempts:
                self._wait_for_orphans()
                continue
            raise PostgresServerError(
                f"the embedded PostgreSQL server did not start (pg_ctl exit {result.returncode}); "
                f"last log lines:\n{tail}",
                fix=(
                    f"read {self.log_file}; if the data directory is damaged and holds nothing you need, "
                    f"move it aside (mv {self.data_dir} {self.data_dir}.broken) and run again"
                ),
            )

    def _wait_for_orphans(self, timeout: float = 10.0) -> None:
        """After a postmaster was killed with SIGKILL its backends exit on their own; wait for them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._orphan_pids():
                return
            time.sleep(0.2)
        for pid in self._orphan_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _orphan_pids(self) -> list[int]:
        data_dir = str(self.data_dir.resolve())
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if os.readlink(proc / "cwd") == data_dir:
                    pids.append(int(proc.name))
        return pids

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log written)"

    def _url(self) -> str:
        password = self._password_file.read_text().strip()
        return f"postgresql://{_USER}:{password}@127.0.0.1:{self._read_port()}/{_DATABASE}"

    def _create_database(self, name: str) -> None:
        import psycopg

        admin_url = self._url().rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
