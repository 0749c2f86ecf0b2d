"""The tool-using agent whose guarded calls (tools/policy.yaml) wait for a human, wired from `agentstack.Settings`.

Its tools are the packs in tools/: the workspace's files, sandboxed Python, and search over the ingested docs.
"""

from _wiring import factory

graph = factory("approval", tool_packs=("workspace", "sandbox", "docs"))
