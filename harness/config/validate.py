"""The one validator: every config value, from a YAML file, a sweep file or the command line,
is checked here, and every error names the field, the value and the rule (Optuna's style).

Two spellings of the same message, because they read better where they appear:
``fail("optim.lr", -1, "must be > 0")`` gives ``optim.lr=-1: must be > 0`` (a field and its
value); ``key_error("space.lr", "low=0.01 > high=0.0001")`` gives ``space.lr: low=...`` (a place in
a file, where the value is part of the rule).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from harness.errors import ConfigError


def fail(name: str, value: Any, rule: str) -> NoReturn:
    raise ConfigError(f"{name}={value!r}: {rule}")


def key_error(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        fail(name, value, f"must be one of {', '.join(choices)}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        fail(name, value, "must be >= 0" if allow_zero else "must be > 0")


def field_kind(annotation: Any) -> tuple[type | None, bool]:
    """``float`` -> (float, False); ``str | None`` -> (str, True); anything else -> (None, ...).

    Read from the annotation's real type arguments, not its text.
    """
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    members = args or (annotation,)
    optional = type(None) in members
    kinds = [m for m in members if m is not type(None)]
    kind = kinds[0] if len(kinds) == 1 and isinstance(kinds[0], type) else None
    return kind, optional


def coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check a YAML/CLI value against a field's type; ints are accepted where floats are."""
    kind, optional = field_kind(annotation)
    if value is None:
        if optional:
            return None
        fail(path, value, "must not be empty")
    if kind is bool:
        if not isinstance(value, bool):
            fail(path, value, "must be true or false")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:  # YAML reads 1e-4 (no dot) as a string
                return float(value)
            except (TypeError, ValueError):
                fail(path, value, "must be a number")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(path, value, "must be an integer")
        return value
    if kind is str:
        if not isinstance(value, str):
            fail(path, value, "must be a string")
        return value
    return value


def mapping(path: str, value: Any) -> Mapping[str, Any]:
    """A YAML mapping, or ``{}`` for an empty key."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise key_error(path, f"must be a mapping, got {type(value).__name__}")
    return value


def only_keys(path: str, value: Mapping[str, Any], known: Sequence[str]) -> None:
    for key in value:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise key_error(where, f"unknown key (known: {', '.join(known)})")


def integer(path: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise key_error(path, f"{value!r} must be an integer >= {low}")
    return value


def number(path: str, value: Any) -> float:
    if isinstance(value, bool):
        raise key_error(path, f"{value!r} must be a number")
    try:
        out = float(value)  # YAML reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise key_error(path, f"{value!r} must be a number") from None
    if not math.isfinite(out):
        raise key_error(path, f"{value!r} must be finite")
    return out


def boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise key_error(path, f"{value!r} must be true or false")
    return value
