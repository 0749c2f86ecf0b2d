"""The tool-using agent whose guarded calls (tools/policy.yaml) wait for a human, wired from `agentstack.Settings`."""

from _wiring import factory

graph = factory(lambda stack: stack.approval_graph())
