"""Secrets kept out of what maeltrace prints and stores: passwords in URLs, and the values of
secret-looking flags on a recorded command line."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

__all__ = ["MASK", "is_secret_name", "redact_argv", "redact_text", "redact_url"]

MASK = "***"
"""What a redacted value reads as."""

_SECRET_PARTS = frozenset(
    {
        "token",
        "key",
        "apikey",
        "password",
        "passwd",
        "pwd",
        "secret",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "cookie",
        "session",
    }
)
_SECRET_ENDINGS = ("token", "apikey", "accesskey", "privatekey", "password", "passwd", "secret")
_PART = re.compile(r"[A-Za-z0-9]+")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def is_secret_name(name: str) -> bool:
    """Whether a flag, option or parameter called ``name`` likely holds a secret: one of its
    words (split at ``-``, ``_``, ``.``) is such as token, key, password, secret, auth, or it
    ends in one (``hfapikey``, ``mytoken``). Erring towards redacting: ``--sort-key`` counts."""
    parts = [part.lower() for part in _PART.findall(name)]
    return any(part in _SECRET_PARTS or part.endswith(_SECRET_ENDINGS) for part in parts)


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) masked, and the values of secret-looking
    query parameters (``?token=...``) masked; anything that is not a URL is returned as is."""
    masked = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    try:
        parts = urllib.parse.urlsplit(masked)
    except ValueError:
        return masked
    if not parts.query:
        return masked
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if not any(is_secret_name(name) for name, _ in query):
        return masked
    cleaned = "&".join(
        f"{name}={MASK}" if is_secret_name(name) else urllib.parse.urlencode({name: value})
        for name, value in query
    )
    return urllib.parse.urlunsplit(parts._replace(query=cleaned))


def redact_text(text: str) -> str:
    """``text`` (a message, a log line) with the userinfo of every URL in it masked."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as it may be recorded: the value of every secret-looking flag masked
    (``--api-key=X``, ``--token X``, ``hf_token=X``), and the userinfo of URLs masked.

    A flag written as ``--name value`` masks the next argument unless that is itself a flag.
    """
    redacted: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next and not arg.startswith("-"):
            redacted.append(MASK)
            mask_next = False
            continue
        mask_next = False
        name, equals, _ = arg.partition("=")
        if equals and is_secret_name(name.lstrip("-")):
            redacted.append(f"{name}={MASK}")
        elif arg.startswith("-") and not equals and is_secret_name(arg.lstrip("-")):
            redacted.append(arg)
            mask_next = True
        else:
            redacted.append(redact_url(arg))
    return redacted
