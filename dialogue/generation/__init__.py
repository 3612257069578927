"""Answer generation backends: `grounded` (extractive, no model) and `openai` (any compatible endpoint)."""
