"""Search over the documents ingested into the stack's hybrid index (`agentstack ingest PATH`)."""

from __future__ import annotations

from langchain_core.tools import BaseTool

from agentstack import Stack
from agentstack.graphs import search_tool


def tools(stack: Stack) -> list[BaseTool]:
    return [search_tool(stack.retrieval.retriever)] if stack.retrieval is not None else []
