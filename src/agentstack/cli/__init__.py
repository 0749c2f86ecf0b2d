"""The `agentstack` command line."""

from agentstack.cli._app import app, main

__all__ = ["app", "main"]
