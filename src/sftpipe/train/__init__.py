"""Training: the loop, loss, batching, checkpoints, run bookkeeping, and the failpoints crash tests kill at
(faults.py)."""
