"""Evaluation on recorded conversations (`dialogue eval`): recorded conversations re-sent to a candidate bot, turn by turn, and
what would have changed, reported."""
