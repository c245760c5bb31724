"""The one exception type users see, and the redaction every message passes through.

A `DGError` carries a single line that names what was wrong and what was expected; the CLI prints it
without a traceback and exits non-zero. Anything else escaping a stage is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# scheme://user:password@host or scheme://token@host (any scheme, even a bad one the user mistyped)
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s'\"]*@)")  # up to the last @
# a bare host:port endpoint written with credentials but no scheme: KEY:SECRET@host
_BARE_USERINFO_RE = re.compile(r"(?P<userinfo>[^\s/?#@'\":]*:[^\s/?#'\"]*@)")
# credentials carried in a query string (presigned URLs, tokens)
_QUERY_SECRET_RE = re.compile(
    r"(?P<key>[?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|access_token|"
    r"password|passwd|secret|api_key|apikey|key)=)[^&#\s'\"]*",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """``text`` with every credential a URL may carry (user:password@, signature/token query values) masked.

    Applied to every DGError message and to every store log line that names an endpoint, so a secret in
    ``AWS_ENDPOINT_URL`` (or in a mistyped URL) never reaches a terminal or a log.
    """
    text = _USERINFO_RE.sub(lambda m: m["scheme"] + "***@", text)
    text = _BARE_USERINFO_RE.sub("***@", text)
    return _QUERY_SECRET_RE.sub(lambda m: m["key"] + "***", text)


_SECRET_WORDS = {"secret", "password", "passwd", "token", "credential", "credentials", "apikey"}


def _is_secret_key(key: str) -> bool:
    """`auth_token`, `secret_key`, `api_key` are secrets; `max_new_tokens` is not (whole words only)."""
    words = key.lower().replace("-", "_").split("_")
    return bool(_SECRET_WORDS & set(words)) or ("key" in words and ({"access", "api", "private"} & set(words)))


def redact(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` with the value of every secret-named field masked: a config is logged only through this."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = redact(v)
        else:
            out[k] = "***" if v and _is_secret_key(k) else v
    return out


class DGError(Exception):
    """A failure caused by input (config, data, credentials, files), reported as one clear line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(redact_url(" ".join(str(message).split())))


def one_line(e: BaseException) -> str:
    """An unexpected exception as one short line (its type and message), for a log or a failing rank's report."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__
