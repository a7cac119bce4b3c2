"""One HTML page: inline CSS, tables rendered by pandas, every text escaped, plotly.js shared.

Reports are opened from a bucket or a laptop with no network, so nothing may be fetched from the web: plotly.js
(4.8 MB) is one file in the output folder that every report and the dashboard load by a relative path, so a run
report stays tens of KB and still opens offline.
"""

from __future__ import annotations

import html
import math
import posixpath
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
import plotly.offline

from detection_engine import storage

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
td { font-variant-numeric: tabular-nums; }
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
PLOTLY_JS = f"plotly-{plotly.__version__}.min.js"  # by version: a later plotly never breaks older reports


def esc(value: object) -> str:
    """Escape anything for HTML text or attributes; None shows as an em dash."""
    return "&mdash;" if value is None else html.escape(str(value), quote=True)


def plot_text(value: object) -> str:
    """Text for plotly labels: plotly renders a subset of HTML in labels and decodes entities, so escaping
    makes user strings (run ids, image tags) show literally instead of being interpreted."""
    return html.escape(str(value), quote=False)


def cell(value: object, digits: int = 2) -> str:
    """A table cell's text (unescaped: pandas escapes it): thousands separators, None as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{value:,}"
    if isinstance(value, float | np.floating):
        if value and abs(value) < 10**-digits:
            return f"{value:.2g}"  # a small amount (a CPU run's cost) must not read as 0.00
        return f"{value:,.{digits}f}"
    return str(value)


def frame_table(frame: pd.DataFrame, *, header: bool = True, index: bool = False) -> str:
    """A DataFrame as an HTML table rendered by pandas; every cell formatted by `cell` and escaped."""
    shown = frame.astype(object).where(frame.notna(), None).map(cell)
    rendered = shown.to_html(index=index, header=header, escape=True, border=0, na_rep="\u2014")
    return re.sub(r">\s+<", "><", rendered)  # pandas indents every tag; a page of tables stays small


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Rows under a header, as a pandas-rendered HTML table."""
    return frame_table(pd.DataFrame(list(rows), columns=list(header), dtype=object))


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column table of label -> value (labels as row headers)."""
    pairs = list(pairs)
    frame = pd.DataFrame({"value": [v for _, v in pairs]}, index=[k for k, _ in pairs], dtype=object)
    return frame_table(frame, header=False, index=True)


def banner(text: str, kind: str = "warn") -> str:
    return f'<div class="banner {esc(kind)}" role="alert">{esc(text)}</div>'


def empty(text: str) -> str:
    return f'<p class="empty">{esc(text)}</p>'


class Page:
    """Collects sections, then renders one HTML document that loads plotly.js from a file beside it."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._sections: list[tuple[str, str, str]] = []
        self.has_figures = False

    def figure(self, fig: go.Figure, div_id: str) -> str:
        """The figure as an HTML fragment; plotly.js itself is loaded once, in the head (see `write_page`)."""
        fragment = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG)
        self.has_figures = True
        return f'<div class="chart">{fragment}</div>'

    def section(self, section_id: str, heading: str, *parts: str) -> None:
        """Add a section; `parts` are HTML fragments already escaped by the helpers above."""
        self._sections.append((section_id, heading, "\n".join(parts)))

    def render(self, plotly_src: str = PLOTLY_JS) -> str:
        """The document; `plotly_src` is plotly.js's path relative to the page (only used with figures)."""
        nav = " ".join(f'<a href="#{esc(sid)}">{esc(heading)}</a>' for sid, heading, _ in self._sections)
        body = "\n".join(
            f'<section id="{esc(sid)}"><h2>{esc(heading)}</h2>\n{content}\n</section>'
            for sid, heading, content in self._sections
        )
        subtitle = f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ""
        script = f'<script src="{esc(plotly_src)}" charset="utf-8"></script>' if self.has_figures else ""
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{_CSS}</style>{script}</head>\n"
            f"<body><h1>{esc(self.title)}</h1>{subtitle}<nav>{nav}</nav>\n{body}\n</body></html>\n"
        )


def write_page(uri: str, page: Page, *, plotly_dir: str | None = None) -> str:
    """Write `page` to `uri`; with figures, make sure `plotly_dir` (default: the page's folder) holds
    PLOTLY_JS and point the page at it relatively, so every report in a folder shares one copy."""
    if not page.has_figures:
        return write_text(uri, page.render())
    folder = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri else "."
    plotly_dir = (plotly_dir or folder).rstrip("/")
    ensure_plotly_js(plotly_dir)
    page_folder, js_folder = storage.path_of(folder), storage.path_of(plotly_dir)
    relative = posixpath.relpath(posixpath.join(js_folder, PLOTLY_JS), page_folder)
    return write_text(uri, page.render(relative))


def ensure_plotly_js(folder: str) -> str:
    """Write plotly.js into `folder` unless it is there already (named by version, written atomically)."""
    uri = f"{folder.rstrip('/')}/{PLOTLY_JS}"
    fs, path = storage.filesystem_for(uri)
    if not fs.exists(path):
        write_text(uri, plotly.offline.get_plotlyjs())
    return uri


def write_text(uri: str, text: str) -> str:
    """Write text to a local path or any fsspec URI (gs:// included), atomically, and return the URI."""
    storage.write_atomic(uri, text.encode("utf-8"))
    return uri
