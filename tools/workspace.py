"""Files the agent may read and write: `AGENTSTACK_WORKSPACE` (default: the working directory), never outside it.

The same setting as `Stack.default_tools()` uses, so an agent run from the CLI and the served one see the
same files. A served graph's working directory is wherever its server started: set AGENTSTACK_WORKSPACE.
"""

from __future__ import annotations

from langchain_core.tools import BaseTool

from agentstack import Stack
from agentstack.graphs import workspace_tools


def tools(stack: Stack) -> list[BaseTool]:
    return workspace_tools(stack.settings.workspace)
