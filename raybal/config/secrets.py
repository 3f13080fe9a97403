"""Credentials in URLs (``study.storage``, ``study.mlflow``): never printed, never stored.

A URL may carry a password (``postgresql://user:secret@host/db``) or a token. raybal keeps the value
as written in the config and resolves it only where it connects; :func:`redact` replaces the password
wherever the URL is printed or stored (``postgresql://user:***@host/db``). A value ``env:NAME`` is read
from the environment variable ``NAME`` when used, so the secret is in no file at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from raybal.config.tree import ConfigError

ENV_PREFIX = "env:"
MASK = "***"
# scheme://user:password@host : the password is masked (the user name stays, for the reader). The password
# runs to the last "@" before the host's "/" (a raw "@" or quote in it is masked too).
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):(?P<secret>[^/\s]+)@")
# ...?password=...&token=... : secrets passed as query parameters
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|token|access_token|secret|api_key|key)=)[^&\s'\"]*",
                    re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password (and any password / token query parameter) of every URL in it masked."""
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", _CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text))


def redacted(value: Any) -> Any:
    """A config tree (dicts, lists, strings) with :func:`redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


def resolve_url(value: str, key: str) -> str:
    """The URL to connect with: ``env:NAME`` read from the environment, else ``value`` itself.

    A stored URL whose password was masked cannot connect: the error says to pass it by variable."""
    if value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if not name or name not in os.environ:
            raise ConfigError(key, f"the environment variable {name!r} is not set (the value is {value!r})")
        return os.environ[name]
    if f":{MASK}@" in value:
        raise ConfigError(key, f"{value!r} lost its password when it was stored; give the URL as "
                               f"'{ENV_PREFIX}VARIABLE' and set that variable")
    return value
