"""Credentials never reach a console, a log, a config or a report: the one place that masks them."""

from __future__ import annotations

import os
import re

# The password of ``scheme://user:password@host``: the user name runs to the first ":" (no "/"
# or "@" in it), the password may hold "/" and ":" (generated passwords, e.g. base64, often do)
# and even an unescaped "@" (SQLAlchemy would stop at the first one; the rest must not show
# either), so it is masked up to the last "@" of the URL. It may also come as a ``password=``
# query value.
_USERINFO_PASSWORD = re.compile(r"(://[^/@:\s]*:)(?:[^@\s]*@)+")
_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&;\s'\"]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL (or a text holding URLs) with every password replaced by ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


def redact(text: str, limit: int = 300) -> str:
    """An exception text on one line, without the W&B API key or a URL's password."""
    key = os.environ.get("WANDB_API_KEY")
    text = " ".join(str(text).split())
    if key:
        text = text.replace(key, "***")
    return mask_url(text)[:limit]
