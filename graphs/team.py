"""The coordinator/researcher/coder/reviewer team, wired from `agentstack.Settings`."""

from _wiring import factory

graph = factory("team")
