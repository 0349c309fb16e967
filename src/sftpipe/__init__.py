"""sftpipe: supervised fine-tuning pipeline (prepare -> train -> eval -> merge -> infer)."""

__version__ = "0.1.0"
