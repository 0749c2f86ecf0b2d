"""Files the agent may read and write: `<AGENTSTACK_HOME>/workspace`, never outside it.

A served graph has no meaningful working directory, so the workspace lives under the agentstack home.
"""

from __future__ import annotations

from langchain_core.tools import BaseTool

from agentstack import Stack
from agentstack.graphs import workspace_tools


def tools(stack: Stack) -> list[BaseTool]:
    return workspace_tools(stack.settings.home / "workspace")
