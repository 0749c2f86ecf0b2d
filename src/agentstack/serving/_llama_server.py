"""Finding, or building, llama.cpp's own `llama-server` for CPU serving.

No PyPI wheel ships `llama-server`, but llama-cpp-python's source package vendors the whole of
llama.cpp, so the binary builds from PyPI alone: one CMake target, no curl, about 6-10 minutes on
two cores. We prefer it to llama-cpp-python's Python server because it has /health, /metrics,
parallel slots and a prompt cache, and it measured 63-69 tok/s against 39 on the Gemma 270M GGUF.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from agentstack.errors import BackendError, MissingDependencyError

__all__ = ["INSTALL_HINT", "LLAMA_CPP_SOURCE", "build_llama_server", "find_llama_server"]

LLAMA_CPP_SOURCE = "llama-cpp-python==0.3.36"
INSTALL_HINT = (
    "run `agentstack build-llama-server` (builds it from PyPI source in about 10 minutes; needs cmake and a C++ "
    "compiler), or set AGENTSTACK_LLAMA_SERVER to an existing llama-server"
)
_BINARY = "llama-server"


def find_llama_server(explicit: Path | None = None, *, home: Path | None = None) -> Path:
    """The binary to launch: an explicit path, then next to this Python, then PATH, then <home>/bin."""
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise MissingDependencyError(
                f"llama_server {explicit} is not an executable file",
                fix="point AGENTSTACK_LLAMA_SERVER at llama-server",
            )
        return explicit
    candidates = [Path(sys.executable).parent / _BINARY]
    on_path = shutil.which(_BINARY)
    if on_path:
        candidates.append(Path(on_path))
    if home is not None:
        candidates.append(home / "bin" / _BINARY)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise MissingDependencyError(
        "llama.cpp's llama-server is not installed (looked next to Python, on PATH and in <home>/bin)",
        fix=INSTALL_HINT,
    )


def build_llama_server(
    dest_dir: Path,
    *,
    cache_dir: Path | None = None,
    jobs: int | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Path:
    """Build `llama-server` from the pinned source package into dest_dir; reuse cache_dir's copy if present."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / _BINARY
    cached = cache_dir / LLAMA_CPP_SOURCE.replace("==", "-") / _BINARY if cache_dir else None
    if cached is not None and os.access(cached, os.X_OK):
        log(f"using cached {cached}")
        _install(cached, target)
        return target
    cmake = shutil.which("cmake")
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cmake is None or compiler is None:
        missing = "cmake" if cmake is None else "a C++ compiler"
        raise MissingDependencyError(
            f"building llama-server needs {missing}", fix="apt-get install cmake g++ (or pip install cmake)"
        )
    with tempfile.TemporaryDirectory(prefix="agentstack-llama-build-") as tmp:
        work = Path(tmp)
        log(f"downloading the {LLAMA_CPP_SOURCE} source package")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(work),
                LLAMA_CPP_SOURCE,
            ],
            log,
        )
        archive = next(work.glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = next(work.glob("*/vendor/llama.cpp"))
        build = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        log("configuring llama.cpp")
        _run(
            [
                cmake,
                "-S",
                str(source),
                "-B",
                str(build),
                *generator,
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
            ],
            log,
        )
        log("building llama-server (several minutes)")
        _run([cmake, "--build", str(build), "--target", _BINARY, "-j", str(jobs or os.cpu_count() or 1)], log)
        built = build / "bin" / _BINARY
        if cached is not None:
            _install(built, cached)
        _install(built, target)
    return target


def _install(source: Path, target: Path) -> None:
    """Copy then rename, so a reader never sees half a binary."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(source, partial)
    partial.chmod(0o755)
    partial.replace(target)


def _run(argv: list[str], log: Callable[[str], None]) -> None:
    # Our environment whole, unlike the servers' allow-list (agentstack._child_env): pip and cmake are configured
    # through it (proxies, index URLs, CA bundles, CC/CXX), and this is a build a developer runs by hand.
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise BackendError(
            f"building llama-server failed at `{' '.join(argv[:4])} ...` (exit {proc.returncode}):\n{tail}",
            fix="install the missing tool named above, or point AGENTSTACK_LLAMA_SERVER at a llama-server you built",
        )
    for line in proc.stdout.splitlines()[-3:]:
        log(line)
