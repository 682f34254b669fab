"""Training machinery of the examples: configuration, checkpoints, data order, the loop."""
