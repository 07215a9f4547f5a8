"""User-facing errors.

Anything raised as a :class:`HarnessError` is a problem with the user's input (a config value, a
dataset file, a CLI option). The CLI prints its message as one line and exits with code 2, without
a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A problem the user can fix; the message names the thing and the rule."""


class ConfigError(HarnessError):
    """An invalid configuration value, key or file."""


class DataError(HarnessError):
    """An invalid or unreadable dataset (names the file and the record)."""


class WeightsError(HarnessError):
    """Pretrained weights that cannot be had or do not fit the model."""
