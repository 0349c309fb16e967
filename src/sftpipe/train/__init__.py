"""Training: the loop, loss, batching, checkpoints, run bookkeeping."""
