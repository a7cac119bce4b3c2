"""One self-contained HTML page: inline CSS, plotly.js embedded once, every text escaped.

Reports are opened from a bucket or a laptop with no network, so nothing may be fetched at view time:
plotly.js is inlined with the first figure and the later figures reuse it.
"""

from __future__ import annotations

import html
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import fsspec
import plotly.graph_objects as go
from fsspec.implementations.local import LocalFileSystem

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #1f2328; }
h1 { font-size: 1.6em; margin: 24px 0 4px; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 32px; }
.subtitle { color: #59636e; margin: 0 0 16px; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 0.85em; }
.banner { padding: 10px 14px; border-radius: 6px; margin: 12px 0; font-weight: 600; }
.banner.bad { background: #ffebe9; border: 1px solid #cf222e; color: #82071e; }
.banner.warn { background: #fff8c5; border: 1px solid #bf8700; color: #633c01; }
.banner.good { background: #dafbe1; border: 1px solid #1a7f37; color: #116329; }
.empty { color: #59636e; font-style: italic; }
.chart { min-height: 360px; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; width: 320px; }
.gallery img { max-width: 100%; border: 1px solid #d0d7de; }
.gallery figcaption { font-size: 0.8em; color: #59636e; word-break: break-all; }
"""

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def esc(value: object) -> str:
    """Escape anything for HTML text or attributes; None shows as an em dash."""
    return "&mdash;" if value is None else html.escape(str(value), quote=True)


def plot_text(value: object) -> str:
    """Text for plotly labels: plotly renders a subset of HTML in labels and decodes entities, so escaping
    makes user strings (run ids, image tags) show literally instead of being interpreted."""
    return html.escape(str(value), quote=False)


def fmt(value: object, digits: int = 2) -> str:
    """A number for a table cell (escaped); None as an em dash."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return esc(value)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped (numbers formatted), columns in `numeric` right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            cells.append(f"<td{cls}>{fmt(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column table of label -> value."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{fmt(v)}</td></tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def banner(text: str, kind: str = "warn") -> str:
    return f'<div class="banner {esc(kind)}" role="alert">{esc(text)}</div>'


def empty(text: str) -> str:
    return f'<p class="empty">{esc(text)}</p>'


class Page:
    """Collects sections, then renders one HTML document with plotly.js inlined exactly once."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._sections: list[tuple[str, str, str]] = []
        self._plotly_included = False

    def figure(self, fig: go.Figure, div_id: str) -> str:
        """The figure as an HTML fragment; the first one carries plotly.js."""
        fragment = fig.to_html(
            full_html=False,
            include_plotlyjs=not self._plotly_included,
            div_id=div_id,
            config=_PLOT_CONFIG,
        )
        self._plotly_included = True
        return f'<div class="chart">{fragment}</div>'

    def section(self, section_id: str, heading: str, *parts: str) -> None:
        """Add a section; `parts` are HTML fragments already escaped by the helpers above."""
        self._sections.append((section_id, heading, "\n".join(parts)))

    def render(self) -> str:
        nav = " ".join(f'<a href="#{esc(sid)}">{esc(heading)}</a>' for sid, heading, _ in self._sections)
        body = "\n".join(
            f'<section id="{esc(sid)}"><h2>{esc(heading)}</h2>\n{content}\n</section>'
            for sid, heading, content in self._sections
        )
        subtitle = f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{esc(self.title)}</h1>{subtitle}<nav>{nav}</nav>\n{body}\n</body></html>\n"
        )


def write_text(uri: str, text: str) -> str:
    """Write the page to a local path or any fsspec URI (gs:// included) and return the URI.

    Atomic like the engine's files: locally a temporary file renamed over the target; on object stores one
    upload, so a reader never sees half a page."""
    fs, path = fsspec.core.url_to_fs(uri)
    data = text.encode("utf-8")
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    else:
        fs.pipe_file(path, data)
    return uri
