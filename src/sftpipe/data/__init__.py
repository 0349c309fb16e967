"""Data: the record model and per-record work (readers, formats, templates, tokenization with loss masks,
filters, syntax checks), the data dir's contract (writer.py), and the prepare stage (prepare/)."""
