"""The report's pages as HTML strings: the index, one page per layer, one page per unit."""
from __future__ import annotations

import numpy as np

from ..results import _hist
from ._data import LayerView, RunView
from ._integrity import banners_html
from ._html import esc, hist_svg, kv_table, num, page, pct, url

# Run-table keys the Run panel shows first, with their labels; the model panel's keys and the
# layers (the layers table) are left out, every other key follows under its own name.
_RUN_ROWS = (("created", "created"), ("dataset", "dataset"), ("limit", "sample (--limit)"), ("top_k", "top-k"),
             ("batch_size", "batch size"), ("device", "device"), ("heads", "maxima reduced by"),
             ("workers", "decode workers"), ("threads", "ONNX Runtime threads"), ("preprocess", "preprocessing"),
             ("versions", "versions"), ("dataset_fingerprint", "dataset fingerprint"))
_MODEL_KEYS = ("model_name", "model_path", "model_sha256", "input_size", "input_name", "layers", "dataset_images")
# Display sizes (CSS pixels) of a unit's grid: layer-page cards, index montage tiles, unit pages.
_CARD_PX, _MONTAGE_PX, _BIG_PX = 200, 160, 420


def unit_href(view: LayerView, unit: int) -> str:
    return f"units/{view.slug}/unit_{unit:04d}.html"


def layer_href(view: LayerView) -> str:
    return f"layers/{view.slug}.html"


def index_page(run: RunView, filters: str | None, montages: dict[str, list[int]]) -> str:
    r = run.run
    title = f"{r.get('model_name') or 'model'} — what each unit has learned"
    model_rows = [("name", esc(r.get("model_name"))), ("file", f'<span class="path">{esc(r.get("model_path"))}</span>'),
                  ("sha256", f"<code>{esc(r.get('model_sha256'))}</code>"), ("input", esc(_shape(r.get("input_size")))),
                  ("layers mined", esc(", ".join(v.name for v in run.layers)))]
    if run.model is not None:
        for key, value in sorted(run.model.info.items()):
            model_rows.append((key, esc(_readable(value))))
    elif run.model_note:
        model_rows.append(("note", esc(run.model_note)))
    body = [f"<h1>{esc(title)}</h1>", banners_html(run),  # unfinished / failed / stale (reporting/_integrity.py)
            f'<p class="sub">Top-{esc(r.get("top_k"))} images per unit, each activation projected back to pixels '
            "with the Zeiler &amp; Fergus deconvnet (reconstructions, left) beside the image patches that caused "
            "them (right).</p>",
            '<div class="cols">', f'<section class="panel"><h3>Model</h3>{kv_table(model_rows)}</section>',
            f'<section class="panel"><h3>Run</h3>{kv_table(run_rows(run))}</section>', "</div>",
            "<h2>Layers</h2>", _layer_table(run), _stale_panel(run), _errors_panel(run)]
    for i, view in enumerate(run.layers):
        body.append(f'<h2 id="{url(view.slug)}">{esc(view.name)}</h2>')
        body.append(_layer_stats(view, run))
        if not view.projected:
            body.append(f'<p class="note">not projected yet: run <code>cnnviz-fast project {esc(str(run.out))}</code> '
                        "for the pictures</p>")
        figs = []
        if i == 0 and filters:
            figs.append(f'<figure><img class="filters" src="{url(filters)}" alt="first-layer filters" loading="lazy">'
                        f"<figcaption>the {esc(view.name)} filters (first Conv, RGB, each scaled to its own range)"
                        "</figcaption></figure>")
        if montages.get(view.name):
            tiles = "".join(_montage_tile(view, unit) for unit in montages[view.name])
            figs.append(f'<figure class="montage-fig"><div class="montage">{tiles}</div><figcaption>a random sample '
                        "of units (fixed seed): reconstructions | patches; click a unit for its page</figcaption></figure>")
        if figs:
            body.append(f'<div class="figure">{"".join(figs)}</div>')
        body.append(f'<p><a href="{url(layer_href(view))}">all {view.info.units:,} units of {esc(view.name)} →</a></p>')
    return page(title, "".join(body), 0, [("report", None)])


def run_rows(run: RunView) -> list[tuple[str, str]]:
    """The Run panel: provenance as readable rows (no JSON), nothing the Model panel shows."""
    r = run.run
    total, errors = run.counts["images"], run.counts["errors"]
    images = f"{total:,} in the dataset"
    if r.get("limit"):
        images += f", a fixed sample of {int(r['limit']):,} mined"
    rows = [("images", esc(f"{images}; {errors:,} could not be used"))]
    for key, label in _RUN_ROWS:
        if key == "limit" or r.get(key) is None:
            continue
        value = _dataset(r[key]) if key == "dataset" else _readable(r[key])
        rows.append((label, f'<span class="path">{esc(value)}</span>' if key in ("dataset", "dataset_fingerprint")
                     else esc(value)))
    shown = {key for key, _ in _RUN_ROWS} | set(_MODEL_KEYS)
    rows += [(key.replace("_", " "), esc(_readable(value))) for key, value in sorted(r.items()) if key not in shown]
    return rows


def _dataset(spec) -> str:
    if not isinstance(spec, dict):
        return _readable(spec)
    kind = spec.get("kind")
    if kind == "folder":
        return f"folder {spec.get('root')}"
    if kind == "list":
        return f"list file {spec.get('list')}"
    if kind == "tar":
        shards = spec.get("shards") or []
        return f"{len(shards):,} tar shard{'s' if len(shards) != 1 else ''}" + (
            f": {shards[0]}" + (f" … {shards[-1]}" if len(shards) > 1 else "") if shards else "")
    return _readable(spec)


def _readable(value) -> str:
    """A run or metadata value as plain text: mappings as "key value, ...", lists comma-joined."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_readable(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_readable(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return num(value, 6)
    return "—" if value is None else str(value)


def _shape(size) -> str:
    return "×".join(map(str, size)) if isinstance(size, (list, tuple)) else _readable(size)


def layer_page(run: RunView, index: int) -> str:
    view = run.layers[index]
    cards = "".join(_unit_card(view, unit) for unit in range(view.info.units))
    pager = []
    if index > 0:
        prev = run.layers[index - 1]
        pager.append(f'<a rel="prev" href="{url(prev.slug)}.html">← {esc(prev.name)}</a>')
    pager.append(f'<a href="../index.html#{url(view.slug)}">index</a>')
    if index + 1 < len(run.layers):
        nxt = run.layers[index + 1]
        pager.append(f'<a rel="next" href="{url(nxt.slug)}.html">{esc(nxt.name)} →</a>')
    controls = ('<div class="toolbar"><label>sort by <select id="sort"><option value="unit">unit number</option>'
                '<option value="max">max (highest first)</option><option value="mean">mean of per-image max</option>'
                '<option value="rate">firing rate</option></select></label><label>show <select id="show">'
                '<option value="all">all units</option><option value="alive">alive units</option>'
                '<option value="dead">dead units</option></select></label><span class="stat" id="shown"></span></div>')
    body = (f'<h1>{esc(view.name)}</h1><div class="pager">{"".join(pager)}</div>{_layer_stats(view, run)}'
            '<p class="sub">Each unit: its top-k reconstructions (left) and the image patches (right), rank 0 '
            f'top left. Greyed units are dead (never fired).</p>{_first_layer_note(run, view)}{controls}'
            f'<div class="units">{cards}</div><script src="../report.js"></script>')
    return page(f"{view.name} — cnnviz_fast", body, 1, [("report", "index.html"), (view.name, None)])


def _first_layer_note(run: RunView, view: LayerView) -> str:
    """Why the first conv layer's tiles repeat: the deconvnet of one layer-1 activation is the
    unit's filter times that activation, whatever the image."""
    first = run.model.layers[0].name if run.model is not None and run.model.layers else None
    if view.name != first:
        return ""
    return ('<p class="note">A layer-1 reconstruction is the unit\'s filter itself, scaled by the activation, '
            "so its top-k tiles look alike; the patches on the right show what varies.</p>")


def unit_page(run: RunView, view: LayerView, unit: int, hist: np.ndarray | None = None) -> str:
    """One unit; `hist` its per-image maxima over the fixed bins of `results._hist` (None: not kept)."""
    st = view.stats[unit]
    pager = []
    if unit > 0:
        pager.append(f'<a rel="prev" href="unit_{unit - 1:04d}.html">← unit {unit - 1}</a>')
    pager.append(f'<a href="../../layers/{url(view.slug)}.html#u{unit}">all units of {esc(view.name)}</a>')
    if unit + 1 < view.info.units:
        pager.append(f'<a rel="next" href="unit_{unit + 1:04d}.html">unit {unit + 1} →</a>')
    badges = ' <span class="badge dead">dead</span>' if st["dead"] else ""
    stale = sum(1 for r in range(view.topk.k) if view.status(unit, r) == "stale")
    if stale:
        badges += f' <span class="badge stale">{stale} stale</span>'
    stats = kv_table([("images seen", num(st["images"])), ("mean of per-image max", num(st["mean_max"])),
                      ("firing rate", pct(st["firing_rate"])), ("max", num(st["max"])),
                      ("dead (never fired)", "yes" if st["dead"] else "no"),
                      ("receptive field", _rf_text(view))])
    files = view.files(unit)
    if files:
        cls = _px(view, _BIG_PX)
        fig = (f'<div class="pair big"><div><img class="{cls}" src="../../img/{url(view.slug)}/{url(files[0])}" '
               f'alt="reconstructions"><div class="lbl">reconstructions</div></div><div><img class="{cls}" '
               f'src="../../img/{url(view.slug)}/{url(files[1])}" alt="patches"><div class="lbl">patches</div></div></div>')
    else:
        fig = f'<p class="empty">{"no images reached this unit" if view.projected else "not projected yet"}</p>'
    rows = [_rank_row(run, view, unit, rank, files) for rank in range(view.topk.k)]
    body = (f'<h1>{esc(view.name)} · unit {unit}{badges}</h1><div class="pager">{"".join(pager)}</div>'
            f'<div class="cols"><section class="panel">{fig}</section><section class="panel"><h3>Statistics</h3>'
            f"{stats}{_hist_panel(hist, st)}</section></div><h2>Top-{view.topk.k}</h2>{_padding_note(run, view, unit)}"
            '<table class="list"><thead><tr><th class="num">rank</th><th class="num">activation</th><th>image '
            "(receptive field boxed)</th><th>reconstruction</th><th>patch</th><th>source</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table>')
    crumbs = [("report", "index.html"), (view.name, f"layers/{view.slug}.html"), (f"unit {unit}", None)]
    return page(f"{view.name} unit {unit} — cnnviz_fast", body, 2, crumbs)


def _hist_panel(hist: np.ndarray | None, st: dict) -> str:
    if hist is None:
        return ""
    low, high = _hist.bin_bounds()
    counted = int(hist.sum())
    note = "" if counted == st["images"] else (f" (counts of {counted:,} of the {st['images']:,} images: the "
                                              "rest were mined before results.db kept histograms)")
    return (f'<h3>Distribution of per-image maxima</h3>{hist_svg(hist, low, high, _hist.CENTER)}'
            f'<p class="stat">Each bar one fixed bin, a quarter octave wide; the grey bar holds the images whose '
            f"maximum is 0 (|max| &lt; {num(float(_hist.EDGES[0]), 3)}).{esc(note)}</p>")


def _padding_note(run: RunView, view: LayerView, unit: int) -> str:
    """Say what the grey margins are when some box of this unit runs off the image."""
    h, w = run.input_hw
    boxes = [view.box(unit, r) for r in range(view.topk.k) if view.topk.image_ids[unit, r] >= 0]
    off = sum(1 for b in boxes if b and h and w and (b[0] < 0 or b[1] < 0 or b[2] > h or b[3] > w))
    if not off:
        return ""
    return (f'<p class="note">{off} of these {len(boxes)} receptive fields run off the image. There the patch is '
            "filled with the model's zero input (the dataset's mean colour, grey) and the reconstruction with zero "
            "(mid grey): padding, not image content. The box on the image is clipped to it.</p>")


def _px(view: LayerView, display: int) -> str:
    """"px" (sharp enlargement) when the unit's grid is smaller than its display size."""
    m = view.marker or {}
    k, cols, pad = view.topk.k, (m.get("grid") or {}).get("cols", 3), (m.get("grid") or {}).get("pad", 1)
    rh, rw = m.get("rf_size") or (0, 0)
    side = max(cols * rw, -(-k // cols) * rh) + (cols + 1) * pad
    return "px" if side < display else "smooth"


def _montage_tile(view: LayerView, unit: int) -> str:
    files = view.files(unit)
    cls = _px(view, _MONTAGE_PX)
    return (f'<a class="mtile" href="{url(unit_href(view, unit))}" title="{esc(view.name)} unit {unit}">'
            f'<span class="lbl">unit {unit}</span><span class="pair"><img class="{cls}" '
            f'src="img/{url(view.slug)}/{url(files[0])}" alt="unit {unit} reconstructions" loading="lazy">'
            f'<img class="{cls}" src="img/{url(view.slug)}/{url(files[1])}" alt="unit {unit} patches" '
            'loading="lazy"></span></a>')


def _layer_table(run: RunView) -> str:
    rows = []
    for v in run.layers:
        stale = f' <span class="badge stale">{len(v.stale)} stale</span>' if v.stale else ""
        rows.append(f'<tr><td><a href="{url(layer_href(v))}">{esc(v.name)}</a></td><td>{esc(v.info.kind)}</td>'
                    f'<td class="num">{v.info.units:,}</td><td>{esc("×".join(map(str, v.info.map_shape)))}</td>'
                    f"<td>{_rf_text(v)}</td><td class=\"num\">{v.dead:,}</td>"
                    f"<td>{_projected_text(v)}{stale}</td></tr>")
    return ('<table class="list"><thead><tr><th>layer</th><th>kind</th><th class="num">units</th><th>map</th>'
            '<th>receptive field</th><th class="num">dead units</th><th>projected</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _projected_text(v: LayerView) -> str:
    reason = (v.marker or {}).get("unsupported")
    if reason:  # patches and boxes are drawn; the reverse plan cannot invert this layer
        return f'<span class="badge stale">cannot be projected: {esc(reason)}</span>'
    return "yes" if v.projected else "no"


def _layer_stats(view: LayerView, run: RunView) -> str:
    fired = [s["firing_rate"] for s in view.stats if s["firing_rate"] is not None]
    mean_rate = sum(fired) / len(fired) if fired else None
    return (f'<div class="layer-head"><span class="stat"><b>{view.info.units:,}</b> units</span>'
            f'<span class="stat">map <b>{esc("×".join(map(str, view.info.map_shape)))}</b></span>'
            f'<span class="stat">receptive field <b>{_rf_text(view)}</b></span>'
            f'<span class="stat"><b>{view.dead:,}</b> dead</span>'
            f'<span class="stat">mean firing rate <b>{pct(mean_rate)}</b></span></div>')


def _rf_text(view: LayerView) -> str:
    if not view.rf:
        return "—"
    (h, w), (sy, sx) = view.rf["size"], view.rf["stride"]
    return esc(f"{h}×{w} px, stride {sy}" if (h, sy) == (w, sx) else f"{h}×{w} px, stride {sy}×{sx}")


def _unit_card(view: LayerView, unit: int) -> str:
    st = view.stats[unit]
    files = view.files(unit)
    dead = " dead" if st["dead"] else ""
    badge = '<span class="badge dead">dead</span>' if st["dead"] else f'<span class="val">max {num(st["max"], 3)}</span>'
    if files:
        cls = _px(view, _CARD_PX)
        inner = (f'<div class="pair"><img class="{cls}" src="../img/{url(view.slug)}/{url(files[0])}" loading="lazy" '
                 f'alt="unit {unit} reconstructions"><img class="{cls}" src="../img/{url(view.slug)}/{url(files[1])}" '
                 f'loading="lazy" alt="unit {unit} patches"></div>')
    else:
        inner = f'<p class="empty">{"no images" if view.projected else "not projected"}</p>'
    data = "".join(f' data-{key}="{_data_num(st[name])}"' for key, name in
                   (("max", "max"), ("mean", "mean_max"), ("rate", "firing_rate")))
    return (f'<div class="unit{dead}" id="u{unit}" data-unit="{unit}"{data} data-dead="{int(bool(st["dead"]))}">'
            f'<header><a href="../{url(unit_href(view, unit))}">unit {unit}</a>{badge}</header>{inner}</div>')


def _data_num(value) -> str:
    """A statistic for a data-* attribute: repr of the float (exact for sorting), "" when none."""
    if value is None or not np.isfinite(value):
        return ""
    return repr(float(value))


def _rank_row(run: RunView, view: LayerView, unit: int, rank: int, files) -> str:
    t = view.topk
    image_id = int(t.image_ids[unit, rank])
    if image_id < 0:
        return f'<tr><td class="num">{rank}</td><td colspan="5" class="empty">no image</td></tr>'
    status = view.status(unit, rank)
    value = num(float(t.values[unit, rank]), 6)
    if status == "stale":
        entry = next((s for s in view.stale if s["unit"] == unit and s["rank"] == rank), {})
        value += f'<br><span class="badge stale">stale</span><br><span class="stat">{esc(entry.get("reason"))}</span>'
    thumb = _thumb(run, view, unit, rank, image_id)
    tiles = ["", ""]
    if files and status == "ok":
        tiles = [_sprite(view, f, rank) for f in files]
    path = run.paths.get(image_id, "?")
    box = view.box(unit, rank)
    where = (f"map ({int(t.ys[unit, rank])}, {int(t.xs[unit, rank])})"
             + (f", box rows {box[0]}…{box[2] - 1}, cols {box[1]}…{box[3] - 1}" if box else ""))
    return (f'<tr><td class="num">{rank}</td><td class="num">{value}</td><td>{thumb}</td><td>{tiles[0]}</td>'
            f'<td>{tiles[1]}</td><td><div class="path">{esc(path)}</div><div class="stat">image {image_id} · '
            f"{esc(where)}</div></td></tr>")


def _thumb(run: RunView, view: LayerView, unit: int, rank: int, image_id: int) -> str:
    if image_id not in run.thumbs:
        return '<span class="stat">no thumbnail</span>'
    h, w = run.input_hw
    overlay = ""
    box = view.box(unit, rank)
    if box and h and w:
        top, left, bottom, right = max(box[0], 0), max(box[1], 0), min(box[2], h), min(box[3], w)
        overlay = (f'<span class="rf" style="top:{100 * top / h:.3f}%;left:{100 * left / w:.3f}%;'
                   f'height:{100 * (bottom - top) / h:.3f}%;width:{100 * (right - left) / w:.3f}%"></span>')
    sharp = " px" if w and w < 256 else ""  # the .thumb width: small inputs enlarged sharp
    return (f'<div class="thumb{sharp}"><img src="../../{url(run.thumbs[image_id])}" loading="lazy" '
            f'alt="image {image_id}">{overlay}</div>')


def _sprite(view: LayerView, file: str, rank: int) -> str:
    """One tile of a unit grid, cut out of the grid PNG by CSS (no extra file per rank)."""
    k, grid = view.topk.k, view.marker["grid"]
    cols, pad = grid["cols"], grid["pad"]
    rh, rw = view.marker["rf_size"]
    rows = -(-k // cols)
    side = 128.0  # the .tile size in CSS pixels
    sy, sx = side / rh, side / rw
    gw, gh = cols * rw + (cols + 1) * pad, rows * rh + (rows + 1) * pad
    x0, y0 = pad + (rank % cols) * (rw + pad), pad + (rank // cols) * (rh + pad)
    return (f'<div class="tile" role="img" aria-label="rank {rank}" style="background-image:url(\'../../img/'
            f"{url(view.slug)}/{url(file)}');background-size:{gw * sx:.2f}px {gh * sy:.2f}px;"
            f'background-position:{-x0 * sx:.2f}px {-y0 * sy:.2f}px"></div>')


def _stale_panel(run: RunView) -> str:
    stale = [(v, s) for v in run.layers for s in v.stale]
    if not stale:
        return ""
    items = "".join(f'<li><a href="{url(unit_href(v, s["unit"]))}">{esc(v.name)} unit {s["unit"]}</a> rank {s["rank"]}: '
                    f'<span class="path">{esc(s["path"])}</span> — {esc(s["reason"])}</li>' for v, s in stale[:50])
    more = f"<p>… and {len(stale) - 50:,} more</p>" if len(stale) > 50 else ""
    return (f'<section class="panel warn"><h3>{len(stale):,} stale top-k entries</h3><p>Their recomputed '
            "activation no longer matches results.db (the image or the model changed after mining); they are "
            f"not drawn.</p><ul>{items}</ul>{more}</section>")


def _errors_panel(run: RunView) -> str:
    if not run.errors:
        return ""
    items = "".join(f'<li><span class="path">{esc(p)}</span>: {esc(e)}</li>' for _, p, e in run.errors)
    return (f'<details class="panel"><summary>{run.counts["errors"]:,} images could not be used while mining'
            f"</summary><ul>{items}</ul></details>")
