"""Keep secrets out of everything sftpipe writes or prints.

A value is a secret when its key looks like one: `*_token`, `*_key`, `*_secret`, `*password*`, `token`,
`secret`, `api_key`, `*_credentials`. Such values are replaced by `REDACTED` in saved configs (run dirs,
checkpoints, data manifests), in `show-config` output and in config error messages. Tokenizer vocabulary
names that end in `_token` (`eos_token`, `pad_token`, ...) are not secrets and are left alone.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

_SECRET = re.compile(r"(^|_)(token|key|secret|password|passwd|credentials?)$|password|secret", re.IGNORECASE)
_NOT_SECRET = {f"{name}_token" for name in ("bos", "eos", "pad", "unk", "sep", "cls", "mask")}
_URL_PASSWORD = re.compile(r"^([\w+.-]+://[^:/@]*:)[^/?#]*@")  # scheme://user:PASSWORD@host (to the last @)


def is_secret_key(key: str) -> bool:
    """Whether a config key or environment variable name holds a credential by its name."""
    return key.lower() not in _NOT_SECRET and bool(_SECRET.search(key))


def redact(value: Any) -> Any:
    """A copy of nested dicts/lists with the value of every secret-named key replaced by REDACTED."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_url(url: str) -> str:
    """A URL (e.g. a database storage URL) with the password of its user:password@ part replaced by ***."""
    return _URL_PASSWORD.sub(r"\1***@", url)
