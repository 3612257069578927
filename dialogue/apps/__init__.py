"""The programs on top: the `dialogue` CLI, the supervisor of `dialogue up`, the typed client, conversation
tests, the evaluation on recorded conversations and the end-to-end answer evaluation. The only layer that
may import `api` and `worker`."""
