"""The learning loop: turns worth a person's look exported for labelling (`dialogue nlu review`), and what a
publisher writes into a model's card (its conversation tests, its replay against the stable version)."""
