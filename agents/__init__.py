"""Search agents, Agentic-R, generative reward models and the shared RL module (`agents.rl`)."""
