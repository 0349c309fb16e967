"""Batching for training, validation and eval: which examples go together (plan.py), in which order per
epoch (order.py), how rows become tensors (collate.py), and the loop's micro-batch source (loader.py).

It sits at the data level so that train and evaluate both use it without importing each other.
"""
