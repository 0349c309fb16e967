"""Merge LoRA adapters into their base model and save a standalone model; the model card of every model dir."""
