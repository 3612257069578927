"""What an LLM call sees of a conversation: token counting, the context within a budget, the rolling
summary and follow-up questions made standalone. Pure functions; the activities feed them."""
