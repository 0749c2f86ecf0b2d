"""The research agent over the hybrid index, wired from `agentstack.Settings`."""

from _wiring import factory

graph = factory("research")
