"""The tasks API: routes, the schemas they parse and answer with, the store of every statement on a user's tasks,
lists, recurrence, conditional requests, Idempotency-Key, the change log's reader and batches."""
