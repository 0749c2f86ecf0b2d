"""Server processes: own process group, logs to a file, startup against health *and* exit code.

Each server gets its own session (so a terminal's Ctrl-C reaches the fleet, which drains, not the
servers) and its output goes straight to a per-replica log file: no pipe for a chatty server to
fill, and the last lines are at hand when it dies. A `Watchdog` outside our process kills the
groups if we are killed before we can. Both get an allow-listed environment (`agentstack._child_env`):
never our API keys or database passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentstack._child_env import child_env
from agentstack.errors import BackendError, MissingDependencyError

__all__ = ["LaunchCommand", "ServerProcess", "Watchdog", "find_program"]

_WATCHDOG = Path(__file__).with_name("_watchdog.py")


@dataclass(frozen=True)
class LaunchCommand:
    """A server's command line, and the variables it gets on top of the allow-listed environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class Watchdog:
    """A tiny sidecar process that outlives us by a few seconds, long enough to kill our servers."""

    def __init__(self, grace_s: float = 5.0) -> None:
        """`grace_s`: between the SIGTERM and the SIGKILL the watchdog sends each group once we are gone."""
        self._proc = subprocess.Popen(
            [sys.executable, str(_WATCHDOG), str(grace_s)],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,
            close_fds=True,
            env=child_env(),
        )

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self) -> None:
        """Normal shutdown: every group was forgotten, so EOF makes the watchdog exit quietly."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class ServerProcess:
    """One launch of one server; a restart is a new `start()` on the same object."""

    def __init__(self, label: str, command: LaunchCommand, log_path: Path, watchdog: Watchdog) -> None:
        self.label = label
        self.command = command
        self.log_path = log_path
        self._watchdog = watchdog
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.command.argv)}\n".encode())
            log.flush()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.command.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env(self.command.env, model_server=True),
                    start_new_session=True,
                )
            except OSError as exc:
                raise BackendError(
                    f"{self.label}: cannot run {self.command.argv[0]}: {exc.strerror}",
                    fix="check that the program exists and is executable (its backend's prepare step found it)",
                ) from exc
        self._watchdog.watch(self._proc.pid)

    async def wait(self) -> int:
        """Wait for the leader to exit (a crash, when nobody called `stop`)."""
        assert self._proc is not None
        return await self._proc.wait()

    async def wait_ready(self, is_ready: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
        """Return once `is_ready()` holds; fail at once if the server exits, or at the deadline."""
        assert self._proc is not None
        exited = asyncio.ensure_future(self._proc.wait())
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if exited.done():
                    raise BackendError(
                        f"{self.label} exited with code {exited.result()} while starting; its last log lines "
                        f"({self.log_path}):\n{self.tail()}",
                        fix="correct the problem the log shows (model path, memory, flags) and start again",
                    )
                if await is_ready():
                    return
                if time.monotonic() > deadline:
                    await self.stop(grace_s=5)
                    raise BackendError(
                        f"{self.label} was not healthy within {timeout_s:.0f}s; its last log lines:\n{self.tail()}",
                        fix="raise startup_timeout_s for a large model, or fix the problem the log shows",
                    )
                await asyncio.wait([exited], timeout=0.25)
        finally:
            exited.cancel()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM the whole group, SIGKILL what is left after grace_s, and reap."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=grace_s)
        _signal_group(pgid, signal.SIGKILL)  # also any worker the leader left behind
        await proc.wait()
        self._watchdog.forget(pgid)

    def kill(self) -> None:
        """SIGKILL the group now (tests and the reliability bench use it to simulate a crash)."""
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def find_program(program: str, *, install_hint: str) -> str:
    """The path of a server program: as given when it is a path, else next to this Python, then on PATH.

    Backends call it from `prepare`, with their own install hint, so a missing server fails before anything starts.
    """
    if os.sep in program:
        if not os.access(program, os.X_OK):
            raise MissingDependencyError(f"the server program {program} is not an executable file", fix=install_hint)
        return program
    found = shutil.which(program, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise MissingDependencyError(f"the server program {program!r} is not installed", fix=install_hint)
    return found
