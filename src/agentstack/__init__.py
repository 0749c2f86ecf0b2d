from agentstack.config import Settings
