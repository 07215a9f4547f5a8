"""Credentials never reach a console, a log, a config or a report: the one place that masks them."""

from __future__ import annotations

import os
import re


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for anything printed or logged)."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def redact(text: str, limit: int = 300) -> str:
    """An exception text on one line, without the W&B API key or a URL's password."""
    key = os.environ.get("WANDB_API_KEY")
    text = " ".join(str(text).split())
    if key:
        text = text.replace(key, "***")
    return mask_url(text)[:limit]
