"""The agent: an LLM that answers a turn by calling the bot's tools.

The loop runs in the workflow (`ConversationWorkflow._agent`): a model step (the `agent_step`
activity) either answers or asks for tools; each tool call is its own activity (`call_tool`),
several at once when the model asks for several; their outcomes go back to the model at the next
step, until it answers or the turn's limits are reached. This package holds what the steps use:
the tool declarations' checks and the messages the model is sent (`dialogue.brain.agent.declarations`), and
how HTTP and MCP tools are called. Tools written in Python are the bot's own, in its folder
(`dialogue.brain.python_tools` loads them).
"""
