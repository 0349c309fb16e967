"""Generation with the template a model was trained with."""
