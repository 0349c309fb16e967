"""Cheap syntax checks for code records: Python with `ast.parse`, Haskell with `ghc -fno-code`.

The code is every fenced block of the response tagged with the language (or untagged); a response with
no fenced block is checked whole. Python is checked in-process in microseconds. Haskell runs GHC, which
parses, renames and type-checks without generating code: about 0.3 s per record, so it is opt-in per
source (`syntax_check: haskell`) and needs `ghc` on PATH.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from sftpipe.data.filters import response_text
from sftpipe.data.records import Conversation, RecordError
from sftpipe.errors import SftpipeError

BLOCK_RE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
TAGS = {"python": ("python", "py", "python3", ""), "haskell": ("haskell", "hs", "")}
GHC_TIMEOUT_S = 60


def require_checker(language: str, field: str) -> None:
    """Fail before any work when the checker a source asks for is not installed.

    Raises:
        SftpipeError: `haskell` was asked for and `ghc` is not on PATH.
    """
    if language == "haskell" and shutil.which("ghc") is None:
        raise SftpipeError(f"{field} is haskell but `ghc` is not on PATH; install GHC (e.g. apt-get install ghc) "
                           "or set it to none")


def code_of(text: str, language: str) -> list[str]:
    """The fenced blocks of `text` in `language` (or untagged); the whole text when it has no fence."""
    blocks = BLOCK_RE.findall(text)
    if not blocks:
        return [text]
    return [code for tag, code in blocks if tag.lower() in TAGS[language]]


def check_syntax(conv: Conversation, language: str) -> None:
    """Raise `RecordError("syntax_error", ...)` when the record's code does not pass the checker."""
    for code in code_of(response_text(conv), language):
        error = python_error(code) if language == "python" else haskell_error(code)
        if error is not None:
            raise RecordError("syntax_error", f"{language}: {error}")


def python_error(code: str) -> str | None:
    """None when `code` parses as Python, else the parser's message with its line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # invalid escapes etc. still parse
            ast.parse(code)
    except SyntaxError as exc:
        return f"line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # null bytes
        return str(exc)
    return None


def haskell_error(code: str) -> str | None:
    """None when GHC accepts `code` with -fno-code (parse + type check, no code generation)."""
    if not re.search(r"^module\s", code, re.MULTILINE):
        # A module header means no `main` is required; the LINE pragma keeps error line numbers the record's.
        code = 'module Snippet where\n{-# LINE 1 "Snippet.hs" #-}\n' + code
    with tempfile.TemporaryDirectory(prefix="sftpipe-ghc-") as tmp:
        path = Path(tmp) / "Snippet.hs"
        path.write_text(code, encoding="utf-8")
        try:
            proc = subprocess.run(["ghc", "-fno-code", "-v0", "-outputdir", tmp, str(path)], cwd=tmp,
                                  capture_output=True, text=True, timeout=GHC_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"ghc took more than {GHC_TIMEOUT_S}s"
    if proc.returncode == 0:
        return None
    message = " ".join((proc.stderr or proc.stdout).split())
    return message.replace(str(path), "Snippet.hs")[:300]
