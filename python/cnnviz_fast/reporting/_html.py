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

import numpy as np

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
main { max-width: 1600px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 6px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
a { color: var(--accent); }
.sub { color: var(--muted); margin: 0 0 16px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 18px; margin: 12px 0; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 16px; }
table.kv { border-collapse: collapse; width: 100%; }
table.kv th { text-align: left; color: var(--muted); font-weight: 500; width: 34%; vertical-align: top; padding: 3px 10px 3px 0; }
table.kv td { padding: 3px 0; overflow-wrap: anywhere; }
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
img.px, .px img { image-rendering: pixelated; }
.filters-note { max-width: 760px; }
img.filters { width: 320px; max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid var(--line); }
.figure figure.montage-fig { flex: 1 1 640px; min-width: 0; }
.montage { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px; }
a.mtile { display: block; background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 6px;
          text-decoration: none; color: var(--ink); }
a.mtile:hover { border-color: var(--accent); }
a.mtile .pair img { min-width: 0; }
a.mtile .lbl { display: block; font-size: 12px; font-weight: 600; margin-bottom: 4px; }
.units { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
.unit { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px 10px; }
.unit header { display: flex; justify-content: space-between; align-items: baseline; margin-bottom: 6px; }
.unit header a { font-weight: 600; text-decoration: none; }
.unit .val { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
.unit[hidden] { display: none; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.pair img { width: 100%; min-width: 150px; height: auto; display: block; aspect-ratio: 1 / 1; background: #ececec; }
.pair.big { max-width: 900px; gap: 14px; }
.pair.big img { min-width: 300px; }
.pair .lbl { color: var(--muted); font-size: 11px; text-align: center; }
.unit.dead { opacity: .55; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 9px; background: #eceff3; color: var(--muted); }
.badge.dead { background: #e4e6e9; color: #59606a; }
.badge.stale { background: #fde7e7; color: var(--stale); }
.empty { color: var(--muted); font-style: italic; padding: 18px 0; text-align: center; }
.note { color: var(--muted); background: #fffbe6; border: 1px solid #f0e3a0; border-radius: 6px; padding: 6px 10px; margin: 8px 0 12px; }
.warn { border-left: 4px solid var(--stale); }
.thumb { position: relative; display: inline-block; width: 256px; overflow: hidden; background: #ddd; vertical-align: middle; }
.thumb img { width: 100%; height: auto; display: block; }
.thumb .rf { position: absolute; border: 2px solid #ffd400; box-shadow: 0 0 0 1px rgba(0,0,0,.7); pointer-events: none; }
.tile { width: 128px; height: 128px; image-rendering: pixelated; display: block; }
.pager { display: flex; gap: 14px; margin: 6px 0 14px; }
.toolbar { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; margin: 10px 0 14px; }
.toolbar select { font: inherit; padding: 2px 6px; }
svg.hist { display: block; max-width: 100%; height: auto; }
svg.hist rect.bar { fill: var(--accent); }
svg.hist rect.zero { fill: var(--dead); }
svg.hist text { font-size: 11px; fill: var(--muted); }
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


# The layer pages' controls (report.js): sort the unit cards by a data-* statistic (descending,
# units without a value last, ties by unit number) and show all, alive or dead units. Plain DOM,
# no module or fetch, so it runs from file://.
SCRIPT = """
(function () {
  var units = document.querySelector(".units");
  var sort = document.getElementById("sort"), show = document.getElementById("show");
  var shown = document.getElementById("shown");
  if (!units || !sort || !show) return;
  var cards = Array.prototype.slice.call(units.querySelectorAll(".unit"));
  function key(card, name) {
    var v = card.getAttribute("data-" + name);
    return v === null || v === "" ? NaN : parseFloat(v);
  }
  function apply() {
    var by = sort.value, which = show.value, visible = 0;
    var ordered = cards.slice().sort(function (a, b) {
      var ua = key(a, "unit"), ub = key(b, "unit");
      if (by === "unit") return ua - ub;
      var va = key(a, by), vb = key(b, by);
      if (isNaN(va) !== isNaN(vb)) return isNaN(va) ? 1 : -1;
      if (!isNaN(va) && va !== vb) return vb - va;
      return ua - ub;
    });
    ordered.forEach(function (card) {
      var dead = card.getAttribute("data-dead") === "1";
      card.hidden = (which === "dead" && !dead) || (which === "alive" && dead);
      if (!card.hidden) visible += 1;
      units.appendChild(card);
    });
    if (shown) shown.textContent = visible + " of " + cards.length + " units shown";
  }
  sort.addEventListener("change", apply);
  show.addEventListener("change", apply);
  apply();
})();
"""


def hist_svg(counts: np.ndarray, low: np.ndarray, high: np.ndarray, center: int, width: int = 560,
             height: int = 150) -> str:
    """An inline SVG bar chart of one unit's histogram: the bins from the first to the last
    non-empty one, equal widths (the bins are log-spaced), the near-zero bin in grey; each bar's
    tooltip gives its interval and count."""
    nz = np.flatnonzero(counts)
    if not len(nz):
        return '<p class="empty">no per-image maxima counted</p>'
    first, last = int(nz[0]), int(nz[-1])
    n = last - first + 1
    left, bottom, top = 8, 30, 8
    bw = (width - 2 * left) / n
    peak = int(counts[first:last + 1].max())
    bars, labels = [], []
    for j, b in enumerate(range(first, last + 1)):
        c = int(counts[b])
        x = left + j * bw
        if c:
            h = max(1.0, (height - bottom - top) * c / peak)
            interval = "|max| < " + num(float(high[b]), 3) if b == center else f"{num(float(low[b]), 4)} … {num(float(high[b]), 4)}"
            bars.append(f'<rect class="{"zero" if b == center else "bar"}" x="{x + 0.5:.2f}" y="{height - bottom - h:.2f}" '
                        f'width="{max(bw - 1, 0.6):.2f}" height="{h:.2f}"><title>{esc(interval)}: {c:,} images</title></rect>')
    ticks = sorted({first, last, *([center] if first <= center <= last else []),
                    *range(first + (-first) % 8, last + 1, 8)})
    placed: list[float] = []
    for b in ticks:
        x = left + (b - first + 0.5) * bw
        if any(abs(x - p) < 46 for p in placed):
            continue
        placed.append(x)
        text = "0" if b == center else num(float(low[b] if low[b] > 0 else high[b]), 3)
        labels.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">{esc(text)}</text>')
    axis = f'<line x1="{left}" y1="{height - bottom}" x2="{width - left}" y2="{height - bottom}" stroke="#99a" />'
    return (f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="histogram of per-image maxima">{axis}{"".join(bars)}{"".join(labels)}'
            f'<text x="{left}" y="{height - 4}">per-image max (log-spaced bins) · tallest bar {peak:,} images</text></svg>')
