"""The tools the built-in graphs hand their agents: a file workspace, sandboxed Python, document search.

Tools report failures as text the agent reads (a missing file, a path outside the workspace, a Python
traceback) instead of raising: an agent can recover from a message, not from a crashed run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import Field

from agentstack.errors import UserError

__all__ = ["python_tool", "search_tool", "workspace_tools"]

_READ_LIMIT = 20_000

# Every argument a model fills is bounded: a grammar-constrained server then stops a small model that starts
# repeating itself inside one, instead of letting it run into the reply's token limit.
WorkspacePath = Annotated[str, Field(max_length=300, description="a path relative to the workspace")]
FileContent = Annotated[str, Field(max_length=8000, description="the whole new content of the file")]
Program = Annotated[str, Field(max_length=6000, description="a complete Python 3 program that prints its result")]


def workspace_tools(root: Path) -> list[BaseTool]:
    """list_files, read_file and write_file, confined to `root` (created if missing)."""
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)

    def inside(path: str) -> Path:
        target = (root / path).resolve()
        if target != root and root not in target.parents:
            raise UserError(f"{path!r} is outside the workspace {root}", fix="use a path relative to the workspace")
        return target

    def list_files(path: WorkspacePath = ".") -> str:
        """List the files under a directory of the workspace."""
        try:
            base = inside(path)
        except UserError as exc:
            return f"error: {exc.problem}"
        if not base.is_dir():
            return f"error: {path!r} is not a directory"
        names = sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())
        return "\n".join(names[:500]) or "(empty)"

    def read_file(path: WorkspacePath) -> str:
        """Read a text file of the workspace."""
        try:
            target = inside(path)
            text = target.read_text(encoding="utf-8")
        except UserError as exc:
            return f"error: {exc.problem}"
        except (OSError, UnicodeDecodeError) as exc:
            return f"error: cannot read {path!r}: {exc}"
        return text if len(text) <= _READ_LIMIT else text[:_READ_LIMIT] + f"\n... ({len(text)} characters)"

    def write_file(path: WorkspacePath, content: FileContent) -> str:
        """Write (create or replace) a text file in the workspace."""
        try:
            target = inside(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        except UserError as exc:
            return f"error: {exc.problem}"
        except OSError as exc:
            return f"error: cannot write {path!r}: {exc}"
        return f"wrote {len(content)} characters to {target.relative_to(root)}"

    return [StructuredTool.from_function(f) for f in (list_files, read_file, write_file)]


def python_tool(*, timeout_s: float = 10.0, memory_mb: int = 512) -> BaseTool:
    """run_python: executes code in the sandbox (no network, time and memory limits, a temporary directory)."""
    from agentstack.graphs._sandbox import run_python as run

    async def run_python(code: Program) -> str:
        """Run a Python program and return its exit code, stdout and stderr."""
        result = await run(code, timeout_s=timeout_s, memory_mb=memory_mb)
        return format_sandbox_result(result)

    return StructuredTool.from_function(coroutine=run_python, name="run_python", description=run_python.__doc__)


def format_sandbox_result(result: Any) -> str:
    status = "timed out" if result.timed_out else f"exit code {result.exit_code}"
    if result.memory_exceeded:
        status += " (memory limit exceeded)"
    return f"{status}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}".strip()


def search_tool(retriever: Any, *, k: int = 5) -> BaseTool:
    """search_docs: the hybrid retriever as a tool (passages tagged with their chunk ids)."""
    from agentstack.rag import retrieval_tool

    return retrieval_tool(retriever, k=k, name="search_docs")
