"""Testing a bot: conversation tests (`dialogue test`) and the stand-in LLM they script."""
