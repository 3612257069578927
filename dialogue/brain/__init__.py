"""What the bot thinks with: the NLU, the knowledge base and its search, the dialogue policy and flows,
reply generation, the LLM's context and summary, and the agent's tools (Python, HTTP, MCP)."""
