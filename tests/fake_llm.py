"""The stand-in LLM the tests use: `dialogue.apps.testing.stand_in_llm` (conversation tests use it too)."""

from dialogue.apps.testing.stand_in_llm import FakeLlm, Plan

__all__ = ["FakeLlm", "Plan"]
