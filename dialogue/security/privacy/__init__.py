"""Privacy: personal data found in user messages and replaced by placeholders before it is kept or sent on."""
