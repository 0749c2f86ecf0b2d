"""`python -m agentstack.cli`: the `agentstack` command, for a process that starts another of its own (the agent
server's worker processes) without relying on where the console script was installed."""

from agentstack.cli import main

main()
