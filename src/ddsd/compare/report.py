"""``report.html``: the comparison's tables and every picture in one self-contained file.

The tables come from the same :class:`~ddsd.compare.table.Document` as ``table.md``; the PNGs are embedded
as base64 data URIs, so the file can be opened or shared on its own. A small inline script sets
``document.body.dataset.images = "loaded/total"`` on window load (a headless-browser check reads it).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from rich.console import Console

from ddsd._io import atomic_write_bytes
from ddsd.compare.table import Cell, Document, Table

__all__ = ["render_html", "write_report"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: .3em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0 .2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: bottom; text-align: left; font-size: 12px; color: #555; padding-top: .3em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #444; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: 90%; word-break: break-all; }
ul.meta { font-size: 14px; padding-left: 1.2em; }
div.table { overflow-x: auto; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.images = ok + "/" + imgs.length;
});
"""


def _inline(text: str) -> str:
    """HTML-escape ``text`` and render the Markdown subset the tables use: ``code`` and **bold**."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cell(c: Cell, tag: str = "td") -> str:
    body = _inline(c.text)
    return f"<{tag}>{'<b>' + body + '</b>' if c.bold and body else body}</{tag}>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in t.header)
    rows = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{_inline(t.caption)}</caption>" if t.caption else ""
    return f'<div class="table"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _img(root: Path, rel: str) -> str:
    data = base64.b64encode((root / rel).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def render_html(doc: Document, root: Path) -> str:
    """The whole report as one HTML string; figure paths are read relative to ``root`` and embedded."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)} — {html.escape(root.resolve().name)}</title>",
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        '<ul class="meta">' + "".join(f"<li><b>{html.escape(k)}</b>: {_inline(v)}</li>" for k, v in doc.meta) + "</ul>",
    ]
    for s in doc.sections:
        parts.append(f"<section><h2>{_inline(s.title)}</h2>")
        parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        parts += [_table(t) for t in s.tables]
        for f in s.figures:
            if (root / f.path).is_file():
                parts.append(f'<figure><img src="{_img(root, f.path)}" alt="{html.escape(f.caption)}">'
                             f"<figcaption>{_inline(f.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out: str | Path, baseline: str | None = None, console: Console | None = None) -> Path:
    """Re-collect ``out`` (``runs.csv``, plots, ``table.md``) and write ``out/report.html``; returns its path."""
    from ddsd.compare.collect import collect

    root = Path(out)
    doc = collect(root, baseline=baseline, console=console)
    path = root / "report.html"
    atomic_write_bytes(path, render_html(doc, root).encode())
    return path
