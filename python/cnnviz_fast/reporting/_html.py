"""HTML building blocks: escaping, the page shell and the stylesheet.

Every string that comes from data (file names, layer names, run values, model metadata) goes
through `esc` before it reaches a page; links are built only from names this package makes
(layer slugs, unit numbers, image ids) and are relative, so the report works from file://.
"""
from __future__ import annotations

import html
import json
import math
from urllib.parse import quote

CSS = """
:root { --ink: #1d232b; --muted: #66707c; --line: #dde1e6; --bg: #f6f7f9; --card: #fff;
        --accent: #2f6fdf; --dead: #a0a6ad; --stale: #c62828; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
header.top { background: #1d232b; color: #fff; padding: 14px 28px; display: flex; align-items: baseline; gap: 18px; }
header.top a { color: #cfe0ff; text-decoration: none; }
header.top .brand { font-weight: 700; letter-spacing: .02em; }
header.top nav { color: #9aa5b1; font-size: 13px; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 6px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
a { color: var(--accent); }
.sub { color: var(--muted); margin: 0 0 16px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin: 12px 0; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 16px; }
table.kv { border-collapse: collapse; width: 100%; }
table.kv th { text-align: left; color: var(--muted); font-weight: 500; width: 34%; vertical-align: top; padding: 3px 10px 3px 0; }
table.kv td { padding: 3px 0; word-break: break-all; }
table.list { border-collapse: collapse; width: 100%; background: var(--card); }
table.list th, table.list td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left; vertical-align: middle; }
table.list th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .path { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; word-break: break-all; }
.layer-head { display: flex; flex-wrap: wrap; gap: 6px 22px; align-items: baseline; }
.stat { color: var(--muted); }
.stat b { color: var(--ink); font-weight: 600; }
.figure { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.figure figure { margin: 0; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
img.px { image-rendering: pixelated; }
img.montage { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
img.filters { width: 320px; max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid var(--line); }
.units { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 12px; }
.unit { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px 10px; }
.unit header { display: flex; justify-content: space-between; align-items: baseline; margin-bottom: 6px; }
.unit header a { font-weight: 600; text-decoration: none; }
.unit .val { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.pair img { width: 100%; height: auto; display: block; aspect-ratio: 1 / 1; background: #ececec; }
.pair.big { max-width: 640px; gap: 14px; }
.pair .lbl { color: var(--muted); font-size: 11px; text-align: center; }
.unit.dead { opacity: .55; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 9px; background: #eceff3; color: var(--muted); }
.badge.dead { background: #e4e6e9; color: #59606a; }
.badge.stale { background: #fde7e7; color: var(--stale); }
.empty { color: var(--muted); font-style: italic; padding: 18px 0; text-align: center; }
.warn { border-left: 4px solid var(--stale); }
.thumb { position: relative; display: inline-block; width: 96px; height: 96px; overflow: hidden; background: #ddd; vertical-align: middle; }
.thumb img { width: 100%; height: 100%; display: block; }
.thumb .rf { position: absolute; border: 2px solid #ffd400; box-shadow: 0 0 0 1px rgba(0,0,0,.7); pointer-events: none; }
.tile { width: 72px; height: 72px; image-rendering: pixelated; display: block; }
.pager { display: flex; gap: 14px; margin: 6px 0 14px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 24px; }
"""


def esc(value) -> str:
    """HTML text of any value (None as an em dash, non-strings as compact JSON)."""
    if value is None:
        return "—"
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    return html.escape(value, quote=True)


def url(path: str) -> str:
    """A relative URL of a path this package made ('/'-separated), percent-encoded."""
    return html.escape(quote(path, safe="/"), quote=True)


def num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def kv_table(rows) -> str:
    """A two-column table of (label, html) rows; labels are escaped, values are given as HTML."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def page(title: str, body: str, depth: int, crumbs: list[tuple[str, str | None]]) -> str:
    """A whole page; `depth` is how many folders below report/ it lives (for relative links),
    `crumbs` (text, href relative to report/ or None) the navigation trail."""
    up = "../" * depth
    trail = " › ".join(f'<a href="{url(up + href)}">{esc(text)}</a>' if href else esc(text) for text, href in crumbs)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><link rel=\"icon\" href=\"data:,\">"
        f"<link rel=\"stylesheet\" href=\"{up}style.css\"></head><body>"
        f"<header class=\"top\"><a class=\"brand\" href=\"{up}index.html\">cnnviz_fast</a><nav>{trail}</nav></header>"
        f"<main>{body}</main><footer>static report written by cnnviz_fast — works from file://</footer>"
        "</body></html>\n"
    )
