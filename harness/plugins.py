"""User code named by an import path: ``model.name: mypkg.nets:make``, ``optim.builder: ...``.

``load_attr`` imports ``package.module`` with the current directory importable (as ``python -m``
does, and only while importing) and returns its attribute; every way that can fail is a one-line
``ConfigError`` that says which part did not resolve. An exception raised by the user's own code
(on import, or later when the harness calls it) becomes a ``UserCodeError``: one line for the
CLI, the original exception kept as ``__cause__`` for ``harness trial --verbose``.
``source_hash`` is what the run record keeps to tell which version of that code trained.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, HarnessError

IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
MAX_MESSAGE = 300  # characters of the user's exception message kept in the one-line error


class UserCodeError(HarnessError):
    """The user's factory, builder or model raised; ``__cause__`` is its exception."""

    verbose: bool = False  # set by ``harness trial --verbose``: the CLI prints the traceback


def is_import_path(value: object) -> bool:
    """``package.module:attr`` (a ':' and Python names on both sides)."""
    return isinstance(value, str) and IMPORT_PATH.fullmatch(value) is not None


def describe(exc: BaseException) -> str:
    """An exception as one short line: ``ValueError: width must be > 0``."""
    text = " ".join(str(exc).split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _cwd_importable() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def load_attr(path: str, what: str) -> Any:
    """The object ``path`` (``package.module:attr``) names; ``what`` is the config field."""
    where = f"{what}={path!r}"
    if not is_import_path(path):
        raise ConfigError(f"{where}: not an import path of the form package.module:attr")
    module_name, _, attr = path.partition(":")
    importlib.invalidate_caches()  # files written since the interpreter started (tests, notebooks)
    try:
        with _cwd_importable():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                f"{where}: module '{missing}' not found (in {os.getcwd()} or installed)"
            ) from None
        raise UserCodeError(
            f"{where}: importing module '{module_name}' failed: {describe(exc)}"
        ) from exc
    except (Exception, SystemExit) as exc:  # sys.exit() in user code is its error, not ours
        raise UserCodeError(
            f"{where}: importing module '{module_name}' failed: {describe(exc)}"
        ) from exc
    obj: Any = module
    owner = f"module '{module_name}'"
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: {owner} has no attribute '{part}'")
        obj = getattr(obj, part)
        owner = f"'{module_name}:{attr.partition(part)[0]}{part}'"
    return obj


def source_file(obj: Any) -> Path | None:
    """The file that defines ``obj`` (None for built-ins, partials, C extensions)."""
    try:
        name = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return Path(name).resolve() if name else None


def source_hash(obj: Any) -> str | None:
    """sha256 of the file that defines ``obj``, or None when it has no source file."""
    path = source_file(obj)
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_record(path: str, what: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a run record keeps of one piece of user code: import path, args, file and hash."""
    obj = load_attr(path, what)
    file = source_file(obj)
    out: dict[str, Any] = {"path": path}
    if args is not None:
        out["args"] = dict(args)
    out["file"] = str(file) if file else None
    out["sha256"] = source_hash(obj)
    return out


def accepted_keywords(fn: Callable[..., Any]) -> tuple[set[str] | None, list[str]]:
    """(names ``fn`` accepts by keyword, or None when it takes ``**kwargs``; its parameters)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some C callables): accept anything
        return None, []
    names = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None, names
    return set(names), names


def call_user(fn: Callable[..., Any], where: str, role: str, *args: Any, **kwargs: Any) -> Any:
    """Call the user's ``fn``; what it raises becomes a one-line ``UserCodeError``."""
    try:
        return fn(*args, **kwargs)
    except (Exception, SystemExit) as exc:  # sys.exit() would end harness with no word
        raise UserCodeError(f"{where}: the {role} raised {describe(exc)}") from exc
