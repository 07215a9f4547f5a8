"""The one progress bar: transient, on a terminal only (in a log it would leave blank lines).

``with bar(total, "epoch 1/8") as advance: advance(info="loss 0.52")`` — ``advance`` is a no-op
when there is no terminal, the bar is disabled, or the job is too small to need one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

Advance = Callable[..., None]


def _noop(n: int = 1, info: str = "") -> None:
    pass


@contextlib.contextmanager
def bar(
    total: int,
    description: str,
    *,
    console: Any = None,
    enabled: bool = True,
    min_total: int = 0,
) -> Iterator[Advance]:
    """Yields ``advance(n=1, info="")``. ``console``: a rich Console (default: stderr)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = console if console is not None else Console(stderr=True)
    if not enabled or total < max(min_total, 1) or not console.is_terminal:
        yield _noop
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str = "") -> None:
            progress.update(task, advance=n, info=info)

        yield advance
