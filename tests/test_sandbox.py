"""The coder's sandbox, with real child processes: what it reports, its limits, its isolation and its cleanup.

Process checks read /proc (host PIDs), because under the PID namespace the sandboxed code's own PIDs mean
nothing to us. Tests that take the `isolation` fixture run twice: under the strongest isolation this machine
allows, and under the audit-hook fallback (forced through the probe's cache, the run itself stays real).
"""

from __future__ import annotations

import ast
import asyncio
import errno
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentstack.errors import UserError
from agentstack.graphs import _sandbox
from agentstack.graphs._sandbox import SandboxResult, run_python
from fleet_helpers import alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

NETWORK_MESSAGE = "network access is disabled in the agentstack sandbox"


@pytest.fixture(params=["strongest", "audit-hook"])
def isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "audit-hook":
        monkeypatch.setattr(_sandbox, "_isolation_cache", _sandbox._AUDIT_HOOK_ONLY)
    return request.param


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1 that nothing should reach; non-blocking, so accept() tells whether anyone did."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def assert_nobody_connected(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


async def strongest_isolation() -> str:
    return (await run_python("pass")).network_isolation


# --- /proc helpers (sync on purpose: a few small reads) ---


def process_tree() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    tree, found, stack = process_tree(), [], [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def exists(path: Path | str) -> bool:
    return Path(path).exists()


def real_tempdir() -> Path:
    return Path(tempfile.gettempdir()).resolve()


POLL_S = 0.02


async def find_descendant(argv: list[str], *, timeout_s: float = 10.0) -> int:
    """The host PID of the process below us running exactly `argv`, once it exists."""
    for _ in range(int(timeout_s / POLL_S)):
        for pid in descendants(os.getpid()):
            if cmdline(pid) == argv:
                return pid
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"no process {argv} appeared under the test process within {timeout_s} s")


async def wait_dead(pids: list[int], *, timeout_s: float = 3.0) -> list[int]:
    """The PIDs still alive after `timeout_s` (SIGKILL is asynchronous: give the kernel a moment)."""
    for _ in range(int(timeout_s / POLL_S)):
        if not any(alive(pid) for pid in pids):
            break
        await asyncio.sleep(POLL_S)
    return [pid for pid in pids if alive(pid)]


# --- what a run reports ---


async def test_output_and_exit_code_zero() -> None:
    result = await run_python("print('héllo ✓')\nimport sys\nprint('warning', file=sys.stderr)")
    assert result.ok
    assert result.exit_code == 0
    assert result.stdout == "héllo ✓\n"
    assert result.stderr == "warning\n"
    assert not (result.timed_out or result.memory_exceeded or result.truncated)
    assert result.network_isolation in ("namespace", "audit-hook")
    assert 0 < result.duration_s < 10


async def test_exit_status_passes_through() -> None:
    result = await run_python("raise SystemExit(3)")
    assert result.exit_code == 3
    assert not result.ok


async def test_exception_gives_nonzero_exit_and_traceback_with_user_line_numbers() -> None:
    result = await run_python("x = 1\ndef f():\n    raise ValueError('boom')\nf()\n")
    assert result.exit_code == 1
    assert not result.ok
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert 'File "main.py", line 4, in <module>' in result.stderr
    assert 'File "main.py", line 3, in f' in result.stderr
    assert "raise ValueError('boom')" in result.stderr  # the source line: the file is still there for linecache
    assert result.stderr.rstrip().endswith("ValueError: boom")
    assert "<string>" not in result.stderr  # the runner's own frame is hidden


async def test_syntax_error_points_at_the_line() -> None:
    result = await run_python("print('ok')\nx = (\n")
    assert result.exit_code == 1
    assert 'File "main.py", line 2' in result.stderr
    assert "SyntaxError" in result.stderr
    assert result.stdout == ""


async def test_stdin_reaches_the_program() -> None:
    result = await run_python("import sys\nprint(sys.stdin.read().upper(), end='')", stdin="ünïcode line\n")
    assert result.stdout == "ÜNÏCODE LINE\n"


async def test_program_that_ignores_a_large_stdin_still_finishes() -> None:
    result = await run_python("print('done')", stdin="x" * 1_000_000, timeout_s=5)
    assert result.ok
    assert result.stdout == "done\n"


async def test_invalid_utf8_output_is_replaced_not_raised() -> None:
    result = await run_python("import sys\nsys.stdout.buffer.write(b'a\\xffb')")
    assert result.ok
    assert result.stdout == "a\ufffdb"


async def test_main_module_behaves_like_a_script() -> None:
    code = (
        "import pickle, sys\n"
        "class Point:\n"
        "    pass\n"
        "assert pickle.loads(pickle.dumps(Point())).__class__ is Point\n"  # pickle finds __main__.Point
        "with open('helper.py', 'w') as f:\n"
        "    f.write('VALUE = 42\\n')\n"
        "import helper\n"  # a module the code wrote next to itself is importable
        "if __name__ == '__main__':\n"
        "    print(helper.VALUE, sys.argv, __file__.endswith('/main.py'))\n"
        "print(sorted(n for n in globals() if not n.startswith('__')))\n"  # nothing of the runner leaked in
    )
    result = await run_python(code)
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["42 ['main.py'] True", "['Point', 'f', 'helper', 'pickle', 'sys']"]


async def test_concurrent_runs_are_independent() -> None:
    code = "import os, time\nopen(f'mine-{os.getcwd()[-8:]}', 'w').close()\ntime.sleep(0.3)\nprint(os.listdir('.'))"
    results = await asyncio.gather(*(run_python(code) for _ in range(3)))
    assert all(result.ok for result in results), [result.stderr for result in results]
    listings = [ast.literal_eval(result.stdout) for result in results]  # each sees only its own file
    assert all(len(listing) == 2 and "main.py" in listing for listing in listings)
    assert len({tuple(sorted(listing)) for listing in listings}) == 3


def test_ok_needs_exit_zero_and_no_timeout() -> None:
    fields = dict(stdout="", stderr="", memory_exceeded=False, duration_s=1.0, network_isolation="namespace")
    assert SandboxResult(exit_code=0, timed_out=False, truncated=False, **fields).ok
    assert not SandboxResult(exit_code=0, timed_out=True, truncated=False, **fields).ok
    assert not SandboxResult(exit_code=None, timed_out=False, truncated=False, **fields).ok
    assert not SandboxResult(exit_code=2, timed_out=False, truncated=False, **fields).ok


# --- limits ---


@pytest.mark.slow
async def test_timeout_kills_the_program_and_its_children(isolation: str) -> None:
    code = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    run = asyncio.create_task(run_python(code, timeout_s=1.0))
    grandchild = await find_descendant(["sleep", "60"])
    result = await run
    assert result.timed_out
    assert not result.ok
    assert result.exit_code is None
    assert not result.memory_exceeded
    assert 1.0 <= result.duration_s < 5
    printed = int(result.stdout.split()[0])  # printed before the kill: output is unbuffered and kept
    if result.network_isolation == "audit-hook":
        assert printed == grandchild  # no PID namespace: the code sees host PIDs
    assert await wait_dead([grandchild]) == []


@pytest.mark.slow
async def test_threads_burning_cpu_count_as_a_timeout() -> None:
    code = (
        "import threading, time\n"
        "def burn():\n"
        "    while True:\n"
        "        pass\n"
        "for _ in range(4):\n"
        "    threading.Thread(target=burn, daemon=True).start()\n"
        "time.sleep(60)\n"
    )
    result = await run_python(code, timeout_s=1.0)
    assert result.timed_out
    assert not result.memory_exceeded
    assert result.exit_code is None


async def test_memory_limit(isolation: str) -> None:
    result = await run_python("data = bytearray(2 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not result.ok
    assert result.memory_exceeded
    assert not result.timed_out
    assert "MemoryError" in result.stderr
    assert "allocated" not in result.stdout
    # The same limit leaves room for an ordinary program: the limit is the cause, not a broken interpreter.
    small = await run_python("data = bytearray(50 * 1024**2)\nprint('allocated')", memory_mb=256)
    assert small.ok, small.stderr
    assert not small.memory_exceeded


async def test_the_program_cannot_raise_its_limits() -> None:
    code = (
        "import resource\n"
        "print(resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_CORE))\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "except (ValueError, OSError):\n"
        "    print('refused')\n"
    )
    result = await run_python(code, memory_mb=300)
    assert result.ok, result.stderr
    cap = 300 * 1024 * 1024
    assert result.stdout == f"({cap}, {cap}) (0, 0)\nrefused\n"


async def test_no_fork_handler_of_ours_runs_for_the_child() -> None:
    """gRPC (under pymilvus) registers fork handlers; run in a forked child, they once wrote an epoll error into
    the program's stderr, which the coder agent then read as the program's output. The sandbox spawns without
    a Python-level fork (vfork), so no handler runs at all."""
    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(os.getpid()))
    before = len(forks)
    result = await run_python("print('hi')")
    assert result.ok and result.stdout == "hi\n" and result.stderr == ""
    assert len(forks) == before


async def test_files_are_capped_in_size() -> None:
    code = (
        "try:\n"
        "    with open('big.bin', 'wb') as f:\n"
        "        f.write(b'x' * (32 * 1024 * 1024))\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    result = await run_python(code, memory_mb=512)
    assert result.ok, result.stderr
    assert result.stdout == f"refused {errno.EFBIG}\n"


async def test_output_is_cut_in_the_middle_at_max_output_bytes() -> None:
    code = "import sys\nprint('START' + 'x' * 100_000 + 'END')\nsys.stderr.write('e' * 50_000 + 'LAST')"
    result = await run_python(code, max_output_bytes=1000)
    assert result.ok
    assert result.truncated
    assert len(result.stdout.encode()) <= 1000
    assert len(result.stderr.encode()) <= 1000
    assert result.stdout.startswith("START")
    assert result.stdout.endswith("END\n")
    assert "bytes cut by the agentstack sandbox" in result.stdout
    assert result.stderr.endswith("LAST")


async def test_output_at_the_limit_is_not_truncated() -> None:
    result = await run_python("print('y' * 999)", max_output_bytes=1000)
    assert not result.truncated
    assert result.stdout == "y" * 999 + "\n"


@pytest.mark.slow
async def test_endless_output_does_not_block_the_deadline() -> None:
    result = await run_python("while True:\n    print('z' * 1000)", timeout_s=1.0, max_output_bytes=5000)
    assert result.timed_out
    assert result.truncated
    assert len(result.stdout.encode()) <= 5000
    assert result.duration_s < 5


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"timeout_s": math.nan}, "timeout_s"),
        ({"timeout_s": math.inf}, "timeout_s"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": -512}, "memory_mb"),
        ({"max_output_bytes": 0}, "max_output_bytes"),
    ],
)
async def test_invalid_arguments_raise_user_error(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(UserError) as caught:
        await run_python("print('never runs')", **kwargs)  # type: ignore[arg-type]
    assert name in caught.value.problem
    assert caught.value.fix


async def test_unencodable_code_raises_user_error() -> None:
    with pytest.raises(UserError, match="surrogate"):
        await run_python("print('\ud800')")


# --- isolation ---


async def test_network_is_blocked(isolation: str, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code = (
        f"import socket\nconnection = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
    )
    result = await run_python(code, timeout_s=5)
    assert not result.ok
    assert "connected" not in result.stdout
    assert "PermissionError" in result.stderr
    assert NETWORK_MESSAGE in result.stderr
    assert_nobody_connected(listener)


async def test_name_lookups_and_ctypes_detours_are_refused(isolation: str) -> None:
    code = (
        "import ctypes, socket\n"  # importing ctypes stays allowed (pandas, scipy, torch need it)
        "attempts = {\n"
        "    'getaddrinfo': lambda: socket.getaddrinfo('localhost', 80),\n"
        "    'gethostbyname': lambda: socket.gethostbyname('localhost'),\n"
        "    'udp sendto': lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9)),\n"
        "    'ctypes connect': lambda: ctypes.CDLL(None).connect,\n"
        "    'ctypes syscall': lambda: ctypes.CDLL(None)['syscall'],\n"
        "}\n"
        "for name, attempt in attempts.items():\n"
        "    try:\n"
        "        attempt()\n"
        "        print(name, 'allowed')\n"
        "    except PermissionError as exc:\n"
        f"        print(name, 'refused' if {NETWORK_MESSAGE!r} in str(exc) else exc)\n"
        "print('strlen', ctypes.CDLL(None).strlen(b'abc'))\n"  # harmless ctypes use still works
    )
    result = await run_python(code)
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == [
        "getaddrinfo refused",
        "gethostbyname refused",
        "udp sendto refused",
        "ctypes connect refused",
        "ctypes syscall refused",
        "strlen 3",
    ]


async def test_namespace_also_blocks_programs_the_audit_hook_cannot_see(listener: socket.socket) -> None:
    if await strongest_isolation() != "namespace":
        pytest.skip("no network namespace here: a subprocess is outside the audit hook (documented limitation)")
    port = listener.getsockname()[1]
    nested = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')"
    code = (
        "import subprocess, sys\n"
        f"done = subprocess.run([sys.executable, '-c', {nested!r}], capture_output=True, text=True)\n"
        "print(done.returncode, done.stdout.strip(), done.stderr.strip().splitlines()[-1])\n"
    )
    result = await run_python(code, timeout_s=5)
    assert result.ok, result.stderr
    assert "connected" not in result.stdout
    assert "Network is unreachable" in result.stdout  # the kernel refused, not our hook (absent in that child)
    assert_nobody_connected(listener)


async def test_environment_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTACK_SANDBOX_TEST_SECRET", "hunter2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-sandbox")
    code = (
        "import os\n"
        "print(os.environ.get('AGENTSTACK_SANDBOX_TEST_SECRET'), os.environ.get('OPENAI_API_KEY'))\n"
        "print(sorted(os.environ))\n"
    )
    result = await run_python(code)
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["None None", "['HOME', 'LANG', 'PATH', 'TMPDIR']"]


async def test_files_land_in_a_temporary_directory_that_is_removed() -> None:
    code = (
        "import os, tempfile\n"
        "with open('out.txt', 'w') as f:\n"
        "    f.write('data')\n"
        "os.makedirs('sub/deeper')\n"
        "print(os.getcwd())\n"
        "print(os.environ['HOME'], tempfile.gettempdir())\n"
        "print(sorted(os.listdir('.')))\n"
    )
    result = await run_python(code)
    assert result.ok, result.stderr
    cwd, homes, listing = result.stdout.splitlines()
    workdir = Path(cwd)
    assert workdir.name.startswith("agentstack-sandbox-")
    assert workdir.parent == real_tempdir()
    assert homes == f"{cwd} {cwd}"  # HOME and TMPDIR are the run's directory too
    assert listing == "['main.py', 'out.txt', 'sub']"
    assert not exists(workdir)


@pytest.mark.slow
async def test_directory_is_removed_after_a_timeout() -> None:
    result = await run_python("import os, time\nprint(os.getcwd(), flush=True)\ntime.sleep(60)", timeout_s=1.0)
    assert result.timed_out
    assert not exists(result.stdout.strip())


async def test_cancellation_kills_the_program_and_removes_its_directory(isolation: str) -> None:
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '61'])\ntime.sleep(60)\n"
    already = set(descendants(os.getpid()))  # servers other tests left running (Postgres, Milvus Lite, ...)
    run = asyncio.create_task(run_python(code, timeout_s=30))
    grandchild = await find_descendant(["sleep", "61"])
    workdir = Path(os.readlink(f"/proc/{grandchild}/cwd"))
    started = [pid for pid in descendants(os.getpid()) if pid not in already]
    assert workdir.name.startswith("agentstack-sandbox-") and exists(workdir)
    assert len(started) >= 2  # the interpreter (under unshare, in the namespace mode) and the sleep
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await wait_dead(started) == []
    assert not exists(workdir)


async def test_processes_that_leave_the_process_group_die_in_the_namespace_mode() -> None:
    if await strongest_isolation() != "namespace":
        pytest.skip("without a PID namespace a process that calls setsid escapes (documented limitation)")
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '62'], start_new_session=True)\ntime.sleep(0.5)\n"
    run = asyncio.create_task(run_python(code, timeout_s=10))
    escaped = await find_descendant(["sleep", "62"])
    result = await run
    assert result.ok, result.stderr  # a normal exit: the namespace, not our timeout, ended the escaped process
    assert await wait_dead([escaped]) == []


@pytest.mark.slow
async def test_an_escaped_process_holding_the_pipes_does_not_hang_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a PID namespace a process that calls setsid survives the run (documented): it must not hold the run
    # hostage through the stdout it inherited. This test cleans it up itself.
    monkeypatch.setattr(_sandbox, "_isolation_cache", _sandbox._AUDIT_HOOK_ONLY)
    code = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '63'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(0.3)\n"
        "print('bye')\n"
    )
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(run_python(code, timeout_s=10), timeout=5)
        assert result.ok, result.stderr
        assert result.stdout.splitlines()[1] == "bye"
        assert time.monotonic() - started < 4
    finally:
        for pid in descendants(1):
            if cmdline(pid) == ["sleep", "63"]:
                os.kill(pid, signal.SIGKILL)
