"""The report's pages as HTML strings: the index, one page per layer, one page per unit."""
from __future__ import annotations

from ._data import LayerView, RunView
from ._html import esc, kv_table, num, page, pct, url

# Keys of the run table shown in their own rows of the provenance panel (the rest follow as is).
_RUN_FIRST = ("created", "model_name", "model_path", "model_sha256", "dataset", "dataset_images", "top_k",
              "device", "batch_size", "preprocess", "versions")


def unit_href(view: LayerView, unit: int) -> str:
    return f"units/{view.slug}/unit_{unit:04d}.html"


def index_page(run: RunView, filters: str | None, montages: dict[str, str]) -> str:
    r = run.run
    title = f"{r.get('model_name') or 'model'} — what each unit has learned"
    model_rows = [("name", esc(r.get("model_name"))), ("file", f'<span class="path">{esc(r.get("model_path"))}</span>'),
                  ("sha256", f"<code>{esc(r.get('model_sha256'))}</code>"), ("input", esc(r.get("input_size"))),
                  ("layers mined", esc(", ".join(v.name for v in run.layers)))]
    if run.model is not None:
        for key, value in sorted(run.model.info.items()):
            model_rows.append((key, esc(value)))
    elif run.model_note:
        model_rows.append(("note", esc(run.model_note)))
    prov = [(key, esc(r[key])) for key in _RUN_FIRST if key in r]
    prov += [(key, esc(value)) for key, value in sorted(r.items()) if key not in _RUN_FIRST and key != "layers"]
    prov.insert(0, ("images", f"{run.counts['images']:,} ({run.counts['errors']:,} could not be used)"))
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="sub">Top-{esc(r.get("top_k"))} images per unit, each activation projected back to pixels '
            "with the Zeiler &amp; Fergus deconvnet (reconstructions, left) beside the image patches that caused "
            "them (right).</p>",
            '<div class="cols">', f'<section class="panel"><h3>Model</h3>{kv_table(model_rows)}</section>',
            f'<section class="panel"><h3>Run</h3>{kv_table(prov)}</section>', "</div>",
            "<h2>Layers</h2>", _layer_table(run), _stale_panel(run), _errors_panel(run)]
    for i, view in enumerate(run.layers):
        body.append(f'<h2 id="{url(view.slug)}">{esc(view.name)}</h2>')
        body.append(_layer_stats(view, run))
        figs = []
        if i == 0 and filters:
            figs.append(f'<figure><img class="filters" src="{url(filters)}" alt="first-layer filters" loading="lazy">'
                        f"<figcaption>the {esc(view.name)} filters (first Conv, RGB, each scaled to its own range)</figcaption></figure>")
        if view.name in montages:
            figs.append(f'<figure><a href="{url("layers/" + view.slug + ".html")}"><img class="montage" '
                        f'src="{url(montages[view.name])}" alt="{esc(view.name)} montage" loading="lazy"></a>'
                        f"<figcaption>a random sample of units (fixed seed): reconstructions | patches</figcaption></figure>")
        elif not view.projected:
            figs.append(f'<p class="empty">not projected yet: run <code>cnnviz-fast project {esc(str(run.out))}</code></p>')
        body.append(f'<div class="figure">{"".join(figs)}</div>')
        body.append(f'<p><a href="{url("layers/" + view.slug + ".html")}">all {view.info.units:,} units of '
                    f"{esc(view.name)} →</a></p>")
    return page(title, "".join(body), 0, [("report", None)])


def layer_page(run: RunView, view: LayerView) -> str:
    cards = []
    for unit in range(view.info.units):
        cards.append(_unit_card(view, unit))
    body = (f"<h1>{esc(view.name)}</h1>{_layer_stats(view, run)}"
            '<p class="sub">Each unit: its top-k reconstructions (left) and the image patches (right), rank 0 '
            f'top left. Greyed units are dead (never fired).</p><div class="units">{"".join(cards)}</div>')
    return page(f"{view.name} — cnnviz_fast", body, 1, [("report", "index.html"), (view.name, None)])


def unit_page(run: RunView, view: LayerView, unit: int) -> str:
    st = view.stats[unit]
    pager = []
    if unit > 0:
        pager.append(f'<a href="unit_{unit - 1:04d}.html">← unit {unit - 1}</a>')
    pager.append(f'<a href="../../layers/{url(view.slug)}.html">all units of {esc(view.name)}</a>')
    if unit + 1 < view.info.units:
        pager.append(f'<a href="unit_{unit + 1:04d}.html">unit {unit + 1} →</a>')
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
        fig = (f'<div class="pair big"><div><img class="px" src="../../img/{url(view.slug)}/{url(files[0])}" '
               f'alt="reconstructions"><div class="lbl">reconstructions</div></div><div><img class="px" '
               f'src="../../img/{url(view.slug)}/{url(files[1])}" alt="patches"><div class="lbl">patches</div></div></div>')
    else:
        fig = f'<p class="empty">{"no images reached this unit" if view.projected else "not projected yet"}</p>'
    rows = [_rank_row(run, view, unit, rank, files) for rank in range(view.topk.k)]
    body = (f'<h1>{esc(view.name)} · unit {unit}{badges}</h1><div class="pager">{"".join(pager)}</div>'
            f'<div class="cols"><section class="panel">{fig}</section><section class="panel"><h3>Statistics</h3>'
            f"{stats}</section></div><h2>Top-{view.topk.k}</h2>"
            '<table class="list"><thead><tr><th class="num">rank</th><th class="num">activation</th><th>image '
            "(receptive field boxed)</th><th>reconstruction</th><th>patch</th><th>source</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table>')
    crumbs = [("report", "index.html"), (view.name, f"layers/{view.slug}.html"), (f"unit {unit}", None)]
    return page(f"{view.name} unit {unit} — cnnviz_fast", body, 2, crumbs)


def _layer_table(run: RunView) -> str:
    rows = []
    for v in run.layers:
        stale = f' <span class="badge stale">{len(v.stale)} stale</span>' if v.stale else ""
        rows.append(f'<tr><td><a href="#{url(v.slug)}">{esc(v.name)}</a></td><td>{esc(v.info.kind)}</td>'
                    f'<td class="num">{v.info.units:,}</td><td>{esc("×".join(map(str, v.info.map_shape)))}</td>'
                    f"<td>{_rf_text(v)}</td><td class=\"num\">{v.dead:,}</td>"
                    f"<td>{'yes' if v.projected else 'no'}{stale}</td></tr>")
    return ('<table class="list"><thead><tr><th>layer</th><th>kind</th><th class="num">units</th><th>map</th>'
            '<th>receptive field</th><th class="num">dead units</th><th>projected</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


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
        inner = (f'<div class="pair"><img class="px" src="../img/{url(view.slug)}/{url(files[0])}" loading="lazy" '
                 f'alt="unit {unit} reconstructions"><img class="px" src="../img/{url(view.slug)}/{url(files[1])}" '
                 f'loading="lazy" alt="unit {unit} patches"></div>')
    else:
        inner = f'<p class="empty">{"no images" if view.projected else "not projected"}</p>'
    return (f'<div class="unit{dead}" id="u{unit}"><header><a href="../{url(unit_href(view, unit))}">unit {unit}</a>'
            f"{badge}</header>{inner}</div>")


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
    return (f'<div class="thumb"><img src="../../{url(run.thumbs[image_id])}" loading="lazy" '
            f'alt="image {image_id}">{overlay}</div>')


def _sprite(view: LayerView, file: str, rank: int) -> str:
    """One tile of a unit grid, cut out of the grid PNG by CSS (no extra file per rank)."""
    k, grid = view.topk.k, view.marker["grid"]
    cols, pad = grid["cols"], grid["pad"]
    rh, rw = view.marker["rf_size"]
    rows = -(-k // cols)
    side = 72.0
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
