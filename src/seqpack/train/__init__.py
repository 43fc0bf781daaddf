"""Training the GPT on packed batches: config, data in three modes, loop, metrics, CLI."""
