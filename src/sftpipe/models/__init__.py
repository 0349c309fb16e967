"""Models: loading, tokenizer fingerprints, trainable model construction (full / LoRA)."""
