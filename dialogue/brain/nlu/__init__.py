"""Natural-language understanding: intents (keyword rules or a trained classifier), entities, sentiment."""
