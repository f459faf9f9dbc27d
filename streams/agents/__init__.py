"""The worker's agents, in data-flow order: join -> learn -> index."""
