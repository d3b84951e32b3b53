"""Deconvnet projections per second, ours (full-frame and windowed) against batched torch autograd.

    python benchmarks/projection.py [--threads N] [--images 64] [--batch 64] [--top 9]
                                    [--units 16 | --all] [--device cpu|cuda] [--json PATH]
    cnnviz-fast bench projection [same options]

The workload is the projection pass of ZFNet (random weights, seed 0, 224x224) at top-k: `--images`
random images are forwarded, each unit's top-k images among them (by the unit's maximum, at its
first maximum position) become its seeds, so every conv layer gets units x k projections (top-9:
96+256+384+384+256 = 1376 units, 12,384 projections).

- baseline: the zoo's PyTorch ZFNet with every ReLU's backward replaced by the deconvnet rule
  (relu of the incoming gradient) and LRN's by the identity — `cnnviz_fast.testing.zoo_oracle` in
  float32 (the tests' oracle runs it in float64); for each batch of `--batch` seeds it
  runs the forward of their images up to the tapped ReLU (not beyond), and one autograd backward of
  the one-hot seeds (each times its activation) to the pixels; weights need no gradient.
- ours: `Projector(device, mode="deconvnet")`, the forward once for the image batch, then the seeds
  in reverse passes of the same `--batch`, full-frame (windowed=False) and windowed (the default).
  Each layer's time includes a forward of all images up to that layer (in a real pass one forward
  serves every layer, so the totals count it five times over: conservative).

Both sides use the same thread count (torch.set_num_threads; ORT intra-op threads and
_C.set_num_threads). By default `--units` units per layer, evenly spaced, are timed and the time of
all of the layer's units is extrapolated linearly (the output says so); `--all` times every seed.
Each layer's windowed result is checked against the baseline on the timed seeds (relative error,
per seed against its own maximum). A few seeds differ by more than 1e-4 for float32 reasons: a
max-pool near-tie that ORT's and torch's forwards round apart (different switches), or a seed
activation near zero; against float64 autograd the baseline is as often the one that is off. Targets (issue 4, on a 2-core CPU): windowed >= 2x the
baseline summed over the five layers, and >= 5x on conv1 and on conv2 each.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _common, as a script or via `cnnviz-fast bench`
import _common  # noqa: E402

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
TARGET_ALL, TARGET_EARLY = 2.0, 5.0


def main(argv=None) -> int:
    args = _parse(argv)
    import torch

    from cnnviz_fast import _C
    from cnnviz_fast.graph import Model
    from cnnviz_fast.projection import Projector
    from cnnviz_fast.runtime import cores

    threads = args.threads or cores()
    torch.set_num_threads(threads)
    _C.set_num_threads(threads)
    model = Model.load("zfnet", random_weights=True, seed=0)
    x = np.random.default_rng(args.seed).normal(size=(args.images, *model.input_size)).astype(np.float32)
    win = Projector(model, device=args.device, threads=threads, batch=args.batch)
    full = Projector(model, device=args.device, threads=threads, batch=args.batch, windowed=False)
    baseline = _Baseline(args.seed, "cuda" if win.device.name == "cuda" else "cpu", args.batch)
    seeds = _topk_seeds(win, x, args.top)

    print(f"ZFNet (random weights) 224x224, {args.images} images, top-{args.top}, seed batch {args.batch}, "
          f"{threads} threads, device {win.device.name} ({_machine(win.device.name)})")
    rows = []
    for name in LAYERS:
        layer = model.layer(name)
        units = layer.units if args.all else min(args.units, layer.units)
        timed = np.concatenate([seeds[name][u] for u in _spread(layer.units, units)])
        scale = layer.units / units
        rows.append(_time_layer(name, x, timed, scale, win, full, baseline, args.warmup))
        r = rows[-1]
        print(f"  {name}: {len(timed)} seeds timed ({units}/{layer.units} units); windowed vs baseline: "
              f"median rel. err. {r['median_rel_err']:.1e}, max {r['max_rel_err']:.1e}, "
              f"{r['over_1e-4']} seed(s) over 1e-4", flush=True)

    u8, i64 = win.switch_bytes(list(LAYERS), images=args.images)
    _print_table(rows, args, u8, i64)
    ok = _verdict(rows)
    if args.json:
        raw = {"rows": rows, "switch_bytes_uint8": u8, "switch_bytes_int64": i64, "threads": threads,
               "device": win.device.name}
        gpu = _machine("cuda") if win.device.name == "cuda" else None
        _common.write(args.json, [json_entry(args, rows, raw, ok)], win.device.name, gpu)
    return 0


def json_entry(args, rows, raw, ok) -> dict:
    """This run in the common benchmark format: projections per second, windowed (ours) against the
    autograd baseline, per layer and summed as the targets are; full-frame in `extra`."""
    groups = [(r["layer"], [r], TARGET_EARLY if r["layer"] in ("conv1", "conv2") else None) for r in rows]
    groups += [("conv1-2", rows[:2], TARGET_EARLY), ("all five", rows, TARGET_ALL)]
    out = []
    for label, rs, target in groups:
        n = sum(r["projections"] for r in rs)
        tb, tf, tw = (sum(r[k] for r in rs) for k in ("baseline_s", "full_s", "windowed_s"))
        # conv1-2's target is on each layer (the rows above), not on their sum.
        out.append(_common.row(f"deconvnet projections, ZFNet {label}, windowed", "projections/s", n / tw, n / tb,
                               "batched torch autograd deconvnet", None if label == "conv1-2" else target,
                               projections=n, full_frame_per_s=n / tf, extrapolated=any(r["extrapolated"] for r in rs)))
    config = {k: v for k, v in vars(args).items() if k != "json"}
    return _common.entry("projection", config, out, raw, passed=ok)


def _parse(argv):
    p = argparse.ArgumentParser(prog="cnnviz-fast bench projection", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads for both sides (default: all cores)")
    p.add_argument("--images", type=int, default=64, help="images forwarded (the seeds' pool)")
    p.add_argument("--batch", type=int, default=64, help="seeds per reverse pass, both sides")
    p.add_argument("--top", type=int, default=9, help="k of the top-k (projections per unit)")
    p.add_argument("--units", type=int, default=16, help="units timed per layer (the rest extrapolated)")
    p.add_argument("--all", action="store_true", help="time every unit (12,384 projections at top-9)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per side and layer first")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (ours; the baseline follows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here (the format of benchmarks/_common.py)")
    return p.parse_args(argv)



def _Baseline(seed: int, device: str, batch: int) -> _common.OracleBaseline:
    """Batched autograd deconvnet on the zoo's torch ZFNet (see the module docstring)."""
    return _common.OracleBaseline("zfnet", seed, device, batch)


def _topk_seeds(projector, x: np.ndarray, k: int) -> dict[str, list[np.ndarray]]:
    """Per layer and unit: int64 [k, 4] seeds (n, c, y, x) of the unit's top-k images."""
    fwd = projector.forward(x, list(LAYERS))
    out = {}
    for name in LAYERS:
        tap = projector.device.host(fwd.values[projector.model.layer(name).tensor])
        n, c, h, w = tap.shape
        flat = tap.reshape(n, c, h * w)
        best, where = flat.max(axis=2), flat.argmax(axis=2)
        order = np.argsort(-best, axis=0, kind="stable")[:k]  # [k, C]: images per unit
        out[name] = [np.stack([order[:, u], np.full(k, u), where[order[:, u], u] // w,
                               where[order[:, u], u] % w], axis=1).astype(np.int64) for u in range(c)]
    return out


def _spread(total: int, count: int) -> list[int]:
    return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))


def _time_layer(name, x, seeds, scale, win, full, baseline, warmup) -> dict:
    warm = seeds[: min(len(seeds), warmup * baseline.batch)]
    if len(warm):
        for p in (win, full):
            p.project(x, layer=name, seeds=warm)
        baseline.project(x, warm, name)
    t_fwd = _timed(lambda: win.forward(x, [name]))[1]
    fwd_w = win.forward(x, [name])
    fwd_f = full.forward(x, [name])
    ref, t_base = _timed(lambda: baseline.project(x, seeds, name))
    got, t_win = _timed(lambda: win.project(fwd_w, layer=name, seeds=seeds))
    _, t_full = _timed(lambda: full.project(fwd_f, layer=name, seeds=seeds))
    scale_err = np.abs(ref).reshape(len(ref), -1).max(1)
    err = np.abs(got - ref).reshape(len(ref), -1).max(1) / np.maximum(scale_err, 1e-30)
    n_all = int(round(len(seeds) * scale))
    return {"layer": name, "projections": n_all, "timed": len(seeds), "extrapolated": scale != 1,
            "baseline_s": t_base * scale, "full_s": t_fwd + t_full * scale, "windowed_s": t_fwd + t_win * scale,
            "forward_s": t_fwd, "windowed": win.is_windowed(name), "max_rel_err": float(err.max()),
            "median_rel_err": float(np.median(err)), "over_1e-4": int((err > 1e-4).sum())}


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _print_table(rows, args, u8, i64) -> None:
    print()
    extrap = any(r["extrapolated"] for r in rows)
    head = f"{'layer':8} {'projections':>11} {'autograd/s':>11} {'full/s':>9} {'windowed/s':>11} " \
           f"{'full x':>7} {'win x':>7} {'target':>7}  result"
    print(head)
    print("-" * len(head))
    groups = [(r["layer"], [r], TARGET_EARLY if r["layer"] in ("conv1", "conv2") else None) for r in rows]
    groups += [("conv1-2", rows[:2], TARGET_EARLY), ("all five", rows, TARGET_ALL)]
    for label, rs, target in groups:
        n = sum(r["projections"] for r in rs)
        tb, tf, tw = (sum(r[k] for r in rs) for k in ("baseline_s", "full_s", "windowed_s"))
        verdict = "" if target is None else ("PASS" if tb / tw >= target else "FAIL")
        print(f"{label:8} {n:>11,} {n / tb:>11.1f} {n / tf:>9.1f} {n / tw:>11.1f} "
              f"{tb / tf:>6.2f}x {tb / tw:>6.2f}x {('>=' + format(target, 'g') + 'x') if target else '':>7}  {verdict}")
        if label == "conv5":
            print("-" * len(head))
    n = sum(r["projections"] for r in rows)
    tw = sum(r["windowed_s"] for r in rows)
    print(f"\nall {n:,} projections: baseline {sum(r['baseline_s'] for r in rows):.1f} s, full-frame "
          f"{sum(r['full_s'] for r in rows):.1f} s, windowed {tw:.1f} s (each layer's time includes its own "
          f"forward of the {args.images} images)")
    if any(r["over_1e-4"] for r in rows):
        print("seeds over 1e-4 come from float32 rounding, not from the method: a max-pool window whose two "
              "largest inputs are within rounding of each other (ORT's and torch's forward passes then pick "
              "different switches), or a seed activation near zero (cancellation). Checked against float64 "
              "autograd, the float32 baseline is as often the one that is off; tests/test_projector_models.py "
              "holds the projector to 1e-4 of a float64 autograd deconvnet.")
    if extrap:
        print(f"times extrapolated linearly from {args.units} timed units per layer (x{args.top} seeds each); "
              "--all times every seed")
    print(f"switches for {args.images} images (pool1 + pool2): uint8 {u8 / 2**20:.1f} MiB vs int64 indices "
          f"{i64 / 2**20:.1f} MiB: {(i64 - u8) / 2**20:.1f} MiB ({1 - u8 / i64:.1%}) saved")


def _verdict(rows) -> bool:
    tb = sum(r["baseline_s"] for r in rows)
    tw = sum(r["windowed_s"] for r in rows)
    early = all(r["baseline_s"] / r["windowed_s"] >= TARGET_EARLY for r in rows[:2])
    ok = tb / tw >= TARGET_ALL and early
    print(f"targets: windowed >= {TARGET_ALL:g}x over all five layers and >= {TARGET_EARLY:g}x on conv1 and "
          f"conv2: {'PASS' if ok else 'FAIL'}")
    return ok


def _machine(device: str) -> str:
    if device == "cuda":
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except Exception:  # torch without CUDA: the GPU's name is only for the header
            return "GPU"
    from cnnviz_fast.runtime import cores

    return f"{platform.processor() or platform.machine()}, {cores()} cores visible"


if __name__ == "__main__":
    sys.exit(main())
