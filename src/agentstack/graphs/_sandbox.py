"""Where the coder agent's Python runs: a child interpreter with a deadline, a memory cap and no network.

Model-written code is usually harmless and occasionally wrong in expensive ways: an endless loop, a 50 GB
allocation, a `pip install`, a request to some URL it hallucinated, a server it forgets to stop. Each run
therefore gets a fresh temporary directory (cwd, HOME and TMPDIR, deleted afterwards), an environment
with nothing of ours in it (no API keys), rlimits on address space, CPU time and file size, and its own
process group, SIGKILLed when the run ends (exit, timeout or cancellation), so nothing it started outlives it.

Network isolation has two strengths, reported in `SandboxResult.network_isolation`:

- ``"namespace"``: the child runs under `unshare` in a private network namespace (only a loopback that is
  down: nothing is reachable, not even our own 127.0.0.1) and a private PID namespace (when its first
  process ends, the kernel kills every process it started, even ones that left the process group with
  `setsid`). A user namespace is preferred even when we are root, so the child's capabilities exist only
  inside it and it cannot `setns` back into the host network or raise its own rlimits.
- ``"audit-hook"``: where namespaces are unavailable (containers whose seccomp profile forbids `unshare`),
  a PEP 578 audit hook, which cannot be removed once installed, refuses socket connects, binds, sends and
  name lookups with a PermissionError. It covers the sandboxed interpreter only: a program it starts
  (`curl`, `pip`, another Python) is not covered.

The audit hook is installed in both modes. Under namespaces it turns a bare "Network is unreachable" into a
message that says why, and it refuses Unix sockets (the Docker socket, Postgres's), which a network namespace
does not cover because they are files. ctypes stays importable (pandas, scipy and torch import it at import
time, so refusing it would refuse them), but looking up libc's socket functions, `syscall` or anything about
audit hooks through it is refused: those are the ways ctypes could dial out behind the hook's back.

This is a guard-rail against accidents, not a boundary against a determined attacker: the code runs as
our user, sees our filesystem and, in the audit-hook mode, could still reach the network through another
program. Linux only (it relies on `resource`, process groups and, for the stronger mode, namespaces).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, cast

from agentstack.errors import UserError

__all__ = ["SandboxResult", "run_python"]

NetworkIsolation = Literal["namespace", "audit-hook"]

_MAX_FILE_BYTES = 16 * 1024 * 1024
_PROBE_TIMEOUT_S = 5.0
# After the child is gone its pipes close at once, unless something that escaped the process group (possible
# only without a PID namespace) still holds them: we stop reading then rather than wait for it.
_PIPE_GRACE_S = 1.0
_SCRIPT_NAME = "main.py"
_MEMORY_MARKERS = (
    "memoryerror",
    "cannot allocate memory",
    "can't allocate memory",
    "memory allocation",
    "out of memory",
    "bad_alloc",
)

# The interpreter's first code (`python -c`, with the rlimits as arguments). It sets the rlimits and installs the
# audit hook, then runs main.py as `__main__` the way `python main.py` would, except that the runner's own frame
# is left out of tracebacks, so the agent sees `File "main.py", line N` for its code and nothing of ours.
_RUNNER = r"""
import sys

def _agentstack_sandbox_limits():
    # First, before any of the program's code: soft = hard, so the code cannot raise them again. A limit already
    # lower than ours (inherited) is kept, since raising a hard limit is refused. The CPU limit is a backstop for
    # what the wall-clock deadline misses (threads burning several CPUs); with soft = hard the kernel SIGKILLs at
    # the limit, which works even where this process is a PID namespace's init (init ignores SIGXCPU).
    import resource
    for name, value in zip(("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_CORE"), sys.argv[1:5]):
        limit = getattr(resource, name)
        value = int(value)
        hard = resource.getrlimit(limit)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, value))

_agentstack_sandbox_limits()

def _agentstack_sandbox_setup():
    import os, types

    network_events = frozenset({
        "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.gethostbyaddr", "socket.gethostbyname",
        "socket.getnameinfo", "socket.sendmsg", "socket.sendto",
    })
    # The C functions behind those events, which ctypes could call directly; `syscall` could call any of them.
    libc_network = frozenset({
        "bind", "connect", "getaddrinfo", "gethostbyaddr", "gethostbyaddr_r", "gethostbyname", "gethostbyname2",
        "gethostbyname2_r", "gethostbyname_r", "getnameinfo", "res_nquery", "res_nsearch", "res_query",
        "res_search", "sendmmsg", "sendmsg", "sendto", "socket", "syscall",
    })
    message = "network access is disabled in the agentstack sandbox"

    def audit(event, args):
        if event in network_events:
            raise PermissionError(f"{message} ({event})")
        if event in ("ctypes.dlsym", "ctypes.dlsym/handle") and isinstance(args[1], str):
            name = args[1].lstrip("_").removeprefix("libc_")
            if name in libc_network or "audit" in name.lower():
                raise PermissionError(f"{message} (ctypes lookup of {args[1]!r})")

    sys.addaudithook(audit)
    workdir = os.getcwd()
    # -I leaves the script's directory off sys.path; put it back so the code can import modules it wrote.
    sys.path.insert(0, workdir)
    sys.argv[:] = ["main.py"]
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(workdir, "main.py")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    with open("main.py", encoding="utf-8") as file:
        return file.read(), main.__dict__

_agentstack_source, _agentstack_namespace = _agentstack_sandbox_setup()
try:
    exec(compile(_agentstack_source, "main.py", "exec"), _agentstack_namespace)
except SystemExit:
    raise
except BaseException as _agentstack_error:
    # The default hook prints the exception's own __traceback__, so drop our frame there, not just in the argument.
    _agentstack_error.__traceback__ = _agentstack_error.__traceback__.tb_next
    sys.excepthook(type(_agentstack_error), _agentstack_error, _agentstack_error.__traceback__)
    sys.exit(1)
"""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run produced, with every way it can have been stopped spelled out for the agent."""

    stdout: str
    stderr: str
    exit_code: int | None
    """The interpreter's exit status; None when a signal killed it (our timeout, the kernel, the code itself)."""
    timed_out: bool
    """Killed at the deadline, or by the kernel at the CPU-time limit."""
    memory_exceeded: bool
    """Best effort: a MemoryError (or a C library's out-of-memory message) in stderr, or a SIGKILL from the
    kernel that the CPU limit cannot explain (the OOM killer)."""
    duration_s: float
    network_isolation: NetworkIsolation
    truncated: bool
    """stdout or stderr was longer than `max_output_bytes`; its middle was cut, the start and the end kept."""

    @property
    def ok(self) -> bool:
        """The code ran to completion and reported success."""
        return self.exit_code == 0 and not self.timed_out


class _Isolation(NamedTuple):
    prefix: tuple[str, ...]
    mode: NetworkIsolation


_AUDIT_HOOK_ONLY = _Isolation((), "audit-hook")
_isolation_cache: _Isolation | None = None


async def run_python(
    code: str, *, timeout_s: float = 10.0, memory_mb: int = 512, max_output_bytes: int = 64_000, stdin: str = ""
) -> SandboxResult:
    """Run `code` as a Python program in a sandboxed child interpreter and report what happened.

    The program runs with the same interpreter and installed packages as we do, in isolated mode (`-I`:
    no PYTHON* variables, no user site-packages), with unbuffered output, so what it printed before a
    timeout is not lost. Failures of the program (exceptions, timeouts, limits) are reported in the result,
    never raised; only a wrong call raises (`UserError`). Cancelling the awaiting task kills the program and
    everything it started before the cancellation propagates.

    `memory_mb` caps the address space (RLIMIT_AS), which is more than resident memory: libraries that
    reserve large virtual ranges at import (torch, JAX) need a larger value. `max_output_bytes` applies to
    stdout and stderr separately.
    """
    _check_arguments(timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes)
    source = _encode(code, "code")
    data = _encode(stdin, "stdin")
    isolation = await _isolation()
    workdir = Path(tempfile.mkdtemp(prefix="agentstack-sandbox-"))
    try:
        (workdir / _SCRIPT_NAME).write_bytes(source)
        return await _run(workdir, data, isolation, timeout_s, memory_mb, max_output_bytes)
    finally:
        _remove_tree(workdir)


def _check_arguments(*, timeout_s: float, memory_mb: int, max_output_bytes: int) -> None:
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise UserError(
            f"timeout_s={timeout_s!r}: the sandbox needs a positive, finite number of seconds",
            fix="pass for example timeout_s=10.0",
        )
    if not (isinstance(memory_mb, int) and memory_mb > 0):
        raise UserError(
            f"memory_mb={memory_mb!r}: the sandbox needs a positive whole number of MiB",
            fix="pass for example memory_mb=512",
        )
    if not (isinstance(max_output_bytes, int) and max_output_bytes > 0):
        raise UserError(
            f"max_output_bytes={max_output_bytes!r}: the sandbox needs a positive whole number of bytes",
            fix="pass for example max_output_bytes=64_000",
        )


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(
            f"the sandbox's {what} is not valid Unicode text ({exc.reason} at position {exc.start})",
            fix=f"remove lone surrogate characters from the {what}",
        ) from None


async def _run(
    workdir: Path, data: bytes, isolation: _Isolation, timeout_s: float, memory_mb: int, max_output_bytes: int
) -> SandboxResult:
    cpu_limit_s = math.ceil(timeout_s) + 1
    limits = (memory_mb * 1024 * 1024, cpu_limit_s, _MAX_FILE_BYTES, 0)  # AS, CPU, FSIZE, CORE: as _RUNNER reads them
    argv = [*isolation.prefix, sys.executable, "-I", "-X", "utf8", "-u", "-c", _RUNNER, *map(str, limits)]
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _Protocol(loop, max_output_bytes),
        *argv,
        stdin=subprocess.PIPE if data else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=_child_env(workdir),
        # No preexec_fn, so Python spawns with vfork: no fork handlers run in the child. gRPC's (pymilvus) once
        # wrote an epoll error into a forked child's stderr, which then reached the agent as the program's output.
        start_new_session=True,
    )
    started = time.monotonic()
    pgid = transport.get_pid()
    stdin = cast("asyncio.WriteTransport | None", transport.get_pipe_transport(0))
    if stdin is not None:
        # Buffered by the transport; a program that exits without reading it only costs a logged-at-debug EPIPE.
        stdin.write(data)
        stdin.close()
    killed_by_us = False
    try:
        done, _ = await asyncio.wait([protocol.exited], timeout=timeout_s)
        killed_by_us = not done
    finally:
        # Always, also after a normal exit or on cancellation: whatever the code left running in its process group
        # (a server, a `sleep` in a subprocess) dies with the run. A second cancellation while we wait below can
        # only cut the waiting short; the SIGKILL has been sent by then.
        _kill_group(pgid)
        try:
            await asyncio.wait([protocol.exited])
            duration_s = time.monotonic() - started
            # The pipes close as soon as the group is gone, unless a process that left the group holds them
            # (possible without a PID namespace): then we stop listening rather than wait for it.
            await asyncio.wait([protocol.pipes_closed], timeout=_PIPE_GRACE_S)
        finally:
            transport.close()

    stdout, stderr = protocol.output[1], protocol.output[2]
    stdout_bytes, stdout_cut = stdout.result()
    stderr_bytes, stderr_cut = stderr.result()
    stderr_text = stderr_bytes.decode("utf-8", errors="replace")
    returncode = transport.get_returncode()
    assert returncode is not None
    timed_out = killed_by_us or returncode == -signal.SIGXCPU
    memory_exceeded = returncode != 0 and any(marker in stderr_text.lower() for marker in _MEMORY_MARKERS)
    if returncode == -signal.SIGKILL and not killed_by_us:
        # The kernel killed it: the CPU-time limit (its hard limit is a SIGKILL) or the OOM killer. CPU time
        # cannot exceed wall time times the CPUs it may use, so when that product is under the limit it was memory.
        if duration_s * len(os.sched_getaffinity(0)) >= cpu_limit_s:
            timed_out = True
        else:
            memory_exceeded = True
    return SandboxResult(
        stdout=stdout_bytes.decode("utf-8", errors="replace"),
        stderr=stderr_text,
        exit_code=returncode if returncode >= 0 else None,
        timed_out=timed_out,
        memory_exceeded=memory_exceeded and not timed_out,
        duration_s=duration_s,
        network_isolation=isolation.mode,
        truncated=stdout_cut or stderr_cut,
    )


def _child_env(workdir: Path) -> dict[str, str]:
    """Only what a program needs to find programs and a home; nothing of ours (API keys, tokens, proxies)."""
    # Our interpreter's directory first, so `python` and `pip` in a subprocess mean the interpreter we run.
    path = os.pathsep.join(dict.fromkeys([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]))
    return {"PATH": path, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Capture:
    """Keeps the first and the last `limit` bytes of a stream while reading all of it.

    Reading to the end (and dropping the middle) keeps a chatty program from blocking on a full pipe; keeping
    the end keeps the traceback, which is what the agent needs most.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def add(self, chunk: bytes) -> None:
        self._total += len(chunk)
        if len(self._head) < self._limit:
            self._head += chunk[: self._limit - len(self._head)]
        self._tail += chunk[-self._limit :]
        del self._tail[: max(0, len(self._tail) - self._limit)]

    def result(self) -> tuple[bytes, bool]:
        """The bytes (at most `limit`) and whether anything was cut."""
        if self._total <= self._limit:
            return bytes(self._head), False
        template = "\n[... {} bytes cut by the agentstack sandbox ...]\n"
        budget = self._limit - len(template.format(self._total))  # the omitted count has at most this many digits
        if budget < 2 * len(template):
            return bytes(self._head[: self._limit]), True
        tail = budget // 2
        head = budget - tail
        marker = template.format(self._total - head - tail).encode()
        return bytes(self._head[:head]) + marker + bytes(self._tail[-tail:]), True


class _Protocol(asyncio.SubprocessProtocol):
    """Captures the output as it arrives and tells exit and end of output apart.

    asyncio's `Process.wait()` (before 3.12) returns only once the pipes are closed too, which a process
    that escaped the group can postpone forever; `exited` does not wait for the pipes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.output = {1: _Capture(limit), 2: _Capture(limit)}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._open_pipes = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.output[fd].add(data if isinstance(data, bytes) else data.encode())

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _remove_tree(path: Path) -> None:
    """Deletes the run's directory even where the code removed its own write or search permissions.

    The first pass makes each directory it trips over ours again; the second removes what the first could not
    descend into once its permissions were back.
    """
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=_make_writable_and_retry)
    shutil.rmtree(path, ignore_errors=True)


def _make_writable_and_retry(function: Callable[[str], object], failed_path: str, _error: object) -> None:
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(failed_path), stat.S_IRWXU)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, stat.S_IRWXU)
        function(failed_path)


async def _isolation() -> _Isolation:
    """The strongest isolation this machine allows, probed once per process.

    Concurrent first calls may each probe; they reach the same answer, so no lock (an asyncio.Lock would
    tie the module to the first event loop that used it).
    """
    global _isolation_cache
    if _isolation_cache is None:
        _isolation_cache = await _probe_isolation()
    return _isolation_cache


async def _probe_isolation() -> _Isolation:
    """Tries `unshare` variants, strongest first, and keeps the first that really gives a new network namespace.

    User namespace first even as root: the child's root then holds capabilities only inside it. Without a PID
    namespace (util-linux before 2.32 has no --kill-child) the process group still catches most descendants.
    The check compares the child's network namespace with ours, so an `unshare` that exits 0 without
    isolating anything (a wrapper, a stub) is not trusted.
    """
    unshare = shutil.which("unshare")
    try:
        our_namespace = os.readlink("/proc/self/ns/net")
    except OSError:
        return _AUDIT_HOOK_ONLY
    if unshare is None:
        return _AUDIT_HOOK_ONLY
    pid_namespace = ("--pid", "--fork", "--kill-child")
    for flags in (
        ("--map-root-user", "--net", *pid_namespace),
        ("--net", *pid_namespace),
        ("--map-root-user", "--net"),
        ("--net",),
    ):
        prefix = (unshare, *flags, "--")
        check = "import os; print(os.readlink('/proc/self/ns/net'))"
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-I",
                "-c",
                check,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
            )
        except OSError:
            continue
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            continue
        finally:
            _kill_group(proc.pid)
            await proc.wait()
        namespace = out.decode(errors="replace").strip()
        if proc.returncode == 0 and namespace.startswith("net:") and namespace != our_namespace:
            return _Isolation(prefix, "namespace")
    return _AUDIT_HOOK_ONLY
