"""Data preparation: readers, formats, templates, tokenization with loss masks, data dir writer."""
