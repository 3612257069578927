"""Who may do what, and what leaves the system: identities, keys and tokens, privacy (redaction) and
erasure."""
