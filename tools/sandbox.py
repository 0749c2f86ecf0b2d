"""Python the agent writes, run in the sandbox: no network, 10 s, 512 MiB, a temporary directory."""

from __future__ import annotations

from langchain_core.tools import BaseTool

from agentstack import Stack
from agentstack.graphs import python_tool


def tools(stack: Stack) -> list[BaseTool]:
    return [python_tool()]  # the library's limits, the same as Stack.default_tools()
