"""Models: loading, tokenizer fingerprints, trainable model construction (full / LoRA), and the embedded tiny
model and tokenizer (tiny.py)."""
