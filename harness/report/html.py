"""What both HTML reports (the study report and the EDA report) are made of: escaped text,
tables, sections, charts saved as PNGs and inlined as base64, so a page opens offline as it is."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class Html(str):
    """Markup that a table cell inserts as it is (everything else is escaped)."""


def esc(value: Any) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are text (left-aligned), the rest numbers."""

    def cell(tag: str, k: int, v: Any) -> str:
        cls = ' class="l"' if k < left else ""
        text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else esc(v)
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "".join(cell("th", k, h) for k, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", k, v) for k, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def inline_png(path: Path, alt: str) -> str:
    """A PNG inlined as base64: the page needs no file beside it."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'


def save_png(fig: Figure, path: Path, dpi: int = 100) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
