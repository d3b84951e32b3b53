"""The native kernels against the obvious alternative, timed side by side in one run.

    python benchmarks/kernels.py [--threads N] [--batch 64] [--repeats 7] [--json PATH] [--cuda]
    cnnviz-fast bench kernels [same options]

Shapes are a batch of 64 224x224 images through ZFNet (models/zfnet.py: 3x3/2 pools in ceil mode)
and AlexNet (torchvision's), on ReLU-like data (about half zeros, as real feature maps):

- switch_pool vs torch F.max_pool2d(return_indices=True), at every pool of both nets;
- unpool vs torch's max_pool2d backward (the adjoint it computes), at the same pools;
- unit_max vs torch amax over (H, W) plus argmax over the flattened map, on conv1..conv5;
- topk_merge vs a NumPy merge (concatenate state and batch per unit, argpartition, order the kept
  ones by value then image id), k=9, 64 images a batch, 50 batches into one running state, with
  every conv unit of each net.

Both sides run with the same thread count (torch.set_num_threads and _C.set_num_threads), timed
alternately in each repeat so that load from other processes falls on both; the median of the
repeats is reported, after warm-up. Every row also checks that both sides agree. Ratio = baseline
time / our time; the targets are the issue's (switch_pool and unit_max at least 1.0x torch,
topk_merge at least 5x NumPy; unpool has none and is reported for information).

With --cuda (and a GPU, and the extension built with CUDA) the CUDA twins are timed with CUDA events
against the same torch ops on the GPU, and their achieved bandwidth (compulsory bytes read plus
written, over time) is shown next to a device-to-device copy's bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _common, as a script or via `cnnviz-fast bench`
import _common  # noqa: E402

BATCH = 64
TOPK_K = 9
TOPK_BATCHES = 50

# (net, layer, conv output [C, H, W] at 224x224, pool after it as (kernel, stride, padding, ceil_mode) or None)
NETS = {
    "zfnet": [
        ("conv1", (96, 110, 110), (3, 2, 0, True)),
        ("conv2", (256, 26, 26), (3, 2, 0, True)),
        ("conv3", (384, 13, 13), None),
        ("conv4", (384, 13, 13), None),
        ("conv5", (256, 13, 13), (3, 2, 0, True)),
    ],
    "alexnet": [
        ("conv1", (64, 55, 55), (3, 2, 0, False)),
        ("conv2", (192, 27, 27), (3, 2, 0, False)),
        ("conv3", (384, 13, 13), None),
        ("conv4", (256, 13, 13), None),
        ("conv5", (256, 13, 13), (3, 2, 0, False)),
    ],
}

TARGETS = {"switch_pool": 1.0, "unit_max": 1.0, "topk_merge": 5.0}


def available_cores():
    from cnnviz_fast.runtime import cores  # imports no native code: OMP_NUM_THREADS may still be set

    return cores()


cpu_name = _common.cpu_name


def relu_map(rng, shape):
    """ReLU-like float32 data: about half exact zeros, the rest positive and continuous."""
    a = rng.standard_normal(shape, dtype=np.float32)
    np.maximum(a, 0, out=a)
    return a


def time_pair(ours, baseline, repeats, warmup):
    """Median seconds of each callable, the two run alternately (order swapped every repeat)."""
    for _ in range(warmup):
        ours()
        baseline()
    t_ours, t_base = [], []
    for r in range(repeats):
        pair = [(ours, t_ours), (baseline, t_base)]
        for fn, acc in pair if r % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_base)


def shape_str(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


def pool_label(pool):
    kernel, stride, padding, ceil_mode = pool
    return f"k{kernel}s{stride}" + (f"p{padding}" if padding else "") + ("c" if ceil_mode else "")


def numpy_topk_merge(state_values, state_ids, state_positions, values, positions, image_ids):
    """The obvious NumPy merge, in place: per unit, argpartition state + batch, then sort the kept k.

    Same rules as the kernel (NaN and -inf never enter; empty slots -inf/-1/-1). The partition looks
    at values only, so a tie at the k-th place may keep the wrong id; the benchmark's scores are
    distinct, where it is exact.
    """
    U, k = state_values.shape
    B = values.shape[0]
    cand_values = np.concatenate([state_values, values.T], axis=1)
    cand_values[np.isnan(cand_values)] = -np.inf
    cand_ids = np.concatenate([state_ids, np.broadcast_to(image_ids, (U, B))], axis=1)
    cand_positions = np.concatenate([state_positions, positions.T], axis=1)
    keep = np.argpartition(-cand_values, k - 1, axis=1)[:, :k]
    kept_values = np.take_along_axis(cand_values, keep, axis=1)
    kept_ids = np.take_along_axis(cand_ids, keep, axis=1)
    order = np.lexsort((kept_ids, -kept_values), axis=1)
    keep = np.take_along_axis(keep, order, axis=1)
    state_values[...] = np.take_along_axis(cand_values, keep, axis=1)
    empty = state_values == -np.inf
    state_ids[...] = np.where(empty, -1, np.take_along_axis(cand_ids, keep, axis=1))
    state_positions[...] = np.where(empty, -1, np.take_along_axis(cand_positions, keep, axis=1))


def empty_topk_state(U, k):
    return [np.full((U, k), -np.inf, np.float32), np.full((U, k), -1, np.int64), np.full((U, k), -1, np.int32)]


def topk_batches(rng, U, batch, count):
    """`count` batches of distinct scores [batch, U], positions, and consecutive image ids."""
    scores = rng.permutation(count * batch * U).astype(np.float32).reshape(count, batch, U)
    positions = rng.integers(0, 110 * 110, (count, batch, U), dtype=np.int32)
    ids = np.arange(count * batch, dtype=np.int64).reshape(count, batch)
    return [(scores[i], positions[i], ids[i]) for i in range(count)]


def cpu_rows(C, torch, F, args, rng):
    """One dict per measured (op, shape) on the CPU."""
    rows = []
    B = args.batch

    def add(op, net, layer, shape, ours_s, baseline, base_s, same):
        target = TARGETS.get(op)
        ratio = base_s / ours_s
        rows.append(
            dict(
                op=op, net=net, layer=layer, shape=shape, ours_ms=ours_s * 1e3, baseline=baseline,
                baseline_ms=base_s * 1e3, ratio=ratio, target=target,
                result="info" if target is None else ("PASS" if ratio >= target else "FAIL"),
                same=bool(same),
            )
        )
        print(f"  {op:<11} {net:<8} {layer:<6} {shape:<30} {ratio:6.2f}x", file=sys.stderr, flush=True)

    for net, layers in NETS.items():
        for layer, chw, pool in layers:
            if pool is None or not {"switch_pool", "unpool"} & args.ops:
                continue
            kernel, stride, padding, ceil_mode = pool
            x = relu_map(rng, (B, *chw))
            xt = torch.from_numpy(x)
            label = f"{shape_str(x.shape)} {pool_label(pool)}"

            def ours_pool():
                return C.switch_pool(x, kernel, stride, padding, ceil_mode=ceil_mode)

            def torch_pool():
                return F.max_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)

            y, s = ours_pool()
            yt, indices = torch_pool()
            if "switch_pool" in args.ops:
                same = np.array_equal(y, yt.numpy())
                t_ours, t_base = time_pair(ours_pool, torch_pool, args.repeats, args.warmup)
                add("switch_pool", net, layer, label, t_ours, "torch max_pool2d+indices", t_base, same)
            if "unpool" in args.ops:
                grad = rng.standard_normal(y.shape, dtype=np.float32)
                gt = torch.from_numpy(grad)
                backward = torch.ops.aten.max_pool2d_with_indices_backward

                def ours_unpool():
                    return C.unpool(grad, s, kernel, stride, padding, output_size=x.shape[2:])

                def torch_unpool():
                    return backward(gt, xt, [kernel, kernel], [stride, stride], [padding, padding], [1, 1], ceil_mode, indices)

                # Ties (the zeros) may pick other sources in torch and overlapping windows add in
                # another order, so the check is on the total, which neither changes.
                total = float(ours_unpool().sum(dtype=np.float64))
                same = math.isclose(total, float(torch_unpool().double().sum()), rel_tol=1e-5, abs_tol=1e-3)
                t_ours, t_base = time_pair(ours_unpool, torch_unpool, args.repeats, args.warmup)
                add("unpool", net, layer, label, t_ours, "torch max_pool2d backward", t_base, same)
            del x, xt, y, s, yt, indices

    if "unit_max" in args.ops:
        for net, layers in NETS.items():
            for layer, chw, _ in layers:
                a = relu_map(rng, (B, *chw))
                at = torch.from_numpy(a)

                def ours_max():
                    return C.unit_max(a)

                def torch_max():
                    return at.amax(dim=(2, 3)), at.flatten(2).argmax(dim=2)

                (v, p), (vt, pt) = ours_max(), torch_max()
                same = np.array_equal(v, vt.numpy()) and np.array_equal(p, pt.numpy())
                t_ours, t_base = time_pair(ours_max, torch_max, args.repeats, args.warmup)
                add("unit_max", net, layer, shape_str(a.shape), t_ours, "torch amax+argmax", t_base, same)
                del a, at

    if "topk_merge" in args.ops:
        for net, layers in NETS.items():
            U = sum(chw[0] for _, chw, _ in layers)
            batches = topk_batches(rng, U, B, TOPK_BATCHES)

            def ours_topk():
                state = empty_topk_state(U, TOPK_K)
                for b in batches:
                    C.topk_merge(*state, *b)
                return state

            def numpy_topk():
                state = empty_topk_state(U, TOPK_K)
                for b in batches:
                    numpy_topk_merge(*state, *b)
                return state

            same = all(np.array_equal(o, n) for o, n in zip(ours_topk(), numpy_topk()))
            t_ours, t_base = time_pair(ours_topk, numpy_topk, args.repeats, args.warmup)
            label = f"U={U} k={TOPK_K} B={B} x{TOPK_BATCHES} batches"
            add("topk_merge", net, "conv*", label, t_ours, "numpy argpartition", t_base, same)
    return rows


def print_cpu_table(rows):
    head = (f"{'op':<11} {'net':<8} {'layer':<6} {'shape':<34} {'ours ms':>9} {'base ms':>9} {'ratio':>7} "
            f"{'target':>7}  {'result':<6} {'agree':<5} baseline")
    print(head)
    print("-" * len(head))
    for r in rows:
        target = "-" if r["target"] is None else f">={r['target']:.1f}x"
        print(
            f"{r['op']:<11} {r['net']:<8} {r['layer']:<6} {r['shape']:<34} {r['ours_ms']:9.2f} {r['baseline_ms']:9.2f} "
            f"{r['ratio']:6.2f}x {target:>7}  {r['result']:<6} {'yes' if r['same'] else 'NO':<5} {r['baseline']}"
        )


def cuda_rows(C, torch, F, args, rng):
    """CUDA twins vs torch on the GPU, all on one stream of our own (never the legacy default)."""
    with torch.cuda.stream(torch.cuda.Stream()):
        return _cuda_rows_on_current_stream(C, torch, F, args, rng)


def _cuda_rows_on_current_stream(C, torch, F, args, rng):
    """Timed with events on torch's current stream; our ops are given the same stream."""
    stream = torch.cuda.current_stream()
    handle = stream.cuda_stream
    B = args.batch
    l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)

    def event_ms(fn, sets):
        """Median ms of fn(i) over repeats, rotating input sets so the L2 cache holds none of them."""
        for i in range(args.warmup * len(sets)):
            fn(sets[i % len(sets)])
        times = []
        for r in range(max(args.repeats, 2 * len(sets))):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            fn(sets[r % len(sets)])
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def copies(a_bytes):
        # Enough distinct input sets to cover four times the L2 cache, at most 8.
        return max(1, min(8, math.ceil(4 * l2_bytes / max(a_bytes, 1))))

    n = 256 << 20
    src, dst = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    src.random_(0, 255)
    copy_ms = event_ms(lambda _: dst.copy_(src), [None])
    copy_gbs = 2 * n / (copy_ms * 1e-3) / 1e9
    del src, dst

    rows = []

    def add(op, net, layer, shape, ours, base, moved, same):
        gbs = moved / (ours * 1e-3) / 1e9
        rows.append(dict(op=op, net=net, layer=layer, shape=shape, ours_ms=ours, torch_ms=base, ratio=base / ours,
                         gb_s=gbs, copy_fraction=gbs / copy_gbs, same=bool(same)))
        print(f"  cuda {op:<11} {net:<8} {layer:<6} {shape:<30} {gbs:8.0f} GB/s", file=sys.stderr, flush=True)

    for net, layers in NETS.items():
        for layer, chw, pool in layers:
            if pool is None:
                continue
            kernel, stride, padding, ceil_mode = pool
            x = torch.from_numpy(relu_map(rng, (B, *chw))).cuda()
            xs = [x] + [x.clone() for _ in range(copies(x.numel() * 4) - 1)]
            label = f"{shape_str(x.shape)} {pool_label(pool)}"
            y, s = C.switch_pool(x, kernel, stride, padding, ceil_mode=ceil_mode, stream=handle)
            yt, indices = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)
            same = torch.equal(torch.from_dlpack(y), yt)
            out = yt.numel()
            ours = event_ms(lambda a: C.switch_pool(a, kernel, stride, padding, ceil_mode=ceil_mode, stream=handle), xs)
            base = event_ms(lambda a: F.max_pool2d(a, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True), xs)
            add("switch_pool", net, layer, label, ours, base, x.numel() * 4 + out * 5, same)

            grad = torch.randn(tuple(y.shape), device="cuda")
            st = torch.from_dlpack(s)
            backward = torch.ops.aten.max_pool2d_with_indices_backward

            def ours_unpool(_):
                return C.unpool(grad, st, kernel, stride, padding, output_size=tuple(x.shape[2:]), stream=handle)

            def torch_unpool(_):
                return backward(grad, x, [kernel] * 2, [stride] * 2, [padding] * 2, [1, 1], ceil_mode, indices)

            # The total is what neither tie-breaking nor the order of overlapping sums changes.
            total = torch.from_dlpack(ours_unpool(None)).double().sum().item()
            same = math.isclose(total, torch_unpool(None).double().sum().item(), rel_tol=1e-5, abs_tol=1e-3)
            ours = event_ms(ours_unpool, [None])
            base = event_ms(torch_unpool, [None])
            add("unpool", net, layer, label, ours, base, out * 5 + x.numel() * 4, same)
            del x, xs, y, s, yt, st, grad, indices

    for net, layers in NETS.items():
        for layer, chw, _ in layers:
            a = torch.from_numpy(relu_map(rng, (B, *chw))).cuda()
            sets = [a] + [a.clone() for _ in range(copies(a.numel() * 4) - 1)]
            v, p = C.unit_max(a, stream=handle)
            same = torch.equal(torch.from_dlpack(v), a.amax(dim=(2, 3))) and torch.equal(
                torch.from_dlpack(p).long(), a.flatten(2).argmax(dim=2))
            ours = event_ms(lambda t: C.unit_max(t, stream=handle), sets)
            base = event_ms(lambda t: (t.amax(dim=(2, 3)), t.flatten(2).argmax(dim=2)), sets)
            add("unit_max", net, layer, shape_str(a.shape), ours, base, a.numel() * 4 + B * chw[0] * 8, same)
            del a, sets, v, p

    for net, layers in NETS.items():
        U = sum(chw[0] for _, chw, _ in layers)
        host_batches = topk_batches(rng, U, B, TOPK_BATCHES)
        batches = [tuple(torch.from_numpy(t).cuda() for t in b) for b in host_batches]
        init = [torch.from_numpy(t).cuda() for t in empty_topk_state(U, TOPK_K)]
        state = [t.clone() for t in init]

        def ours_topk(_):
            for t, i in zip(state, init):
                t.copy_(i)
            for b in batches:
                C.topk_merge(*state, *b, stream=handle)

        def torch_topk(_):
            # torch.topk on values alone: ties are not broken by image id (timing only).
            sv, si, sp = (t.clone() for t in init)
            for v, p, ids in batches:
                cand_v = torch.cat([sv, v.T], dim=1).nan_to_num(nan=-math.inf)
                cand_i = torch.cat([si, ids.expand(U, -1)], dim=1)
                cand_p = torch.cat([sp, p.T], dim=1)
                sv, keep = cand_v.topk(TOPK_K, dim=1)
                si, sp = cand_i.gather(1, keep), cand_p.gather(1, keep)

        ours_topk(None)
        want = empty_topk_state(U, TOPK_K)
        for b in host_batches:
            numpy_topk_merge(*want, *b)
        same = all(np.array_equal(t.cpu().numpy(), w) for t, w in zip(state, want))
        ours = event_ms(ours_topk, [None])
        base = event_ms(torch_topk, [None])
        moved = TOPK_BATCHES * (B * U * 8 + B * 8 + 2 * U * TOPK_K * 16)
        add("topk_merge", net, "conv*", f"U={U} k={TOPK_K} B={B} x{TOPK_BATCHES} batches", ours, base, moved, same)
    return rows, copy_gbs


def print_cuda_table(rows, copy_gbs, name):
    print(f"\nCUDA on {name}; device-to-device copy (read + write): {copy_gbs:.0f} GB/s")
    head = (f"{'op':<11} {'net':<8} {'layer':<6} {'shape':<34} {'ours ms':>9} {'torch ms':>9} {'ratio':>7} "
            f"{'GB/s':>7} {'of copy':>8} agree")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['op']:<11} {r['net']:<8} {r['layer']:<6} {r['shape']:<34} {r['ours_ms']:9.3f} {r['torch_ms']:9.3f} "
            f"{r['ratio']:6.2f}x {r['gb_s']:7.0f} {100 * r['copy_fraction']:7.0f}% {'yes' if r['same'] else 'NO'}"
        )


def parse_args(argv):
    p = argparse.ArgumentParser(prog="cnnviz-fast bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads for both sides (default: the cores this process may use)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"images per batch (default {BATCH})")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per side; the median is reported (default 7)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per side first (default 1)")
    p.add_argument("--ops", default="switch_pool,unpool,unit_max,topk_merge", help="comma-separated subset of the ops")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (the format of benchmarks/_common.py)")
    p.add_argument("--cuda", action="store_true", help="also time the CUDA kernels (needs a GPU, torch with CUDA, a CUDA build)")
    args = p.parse_args(argv)
    args.ops = {o.strip() for o in args.ops.split(",") if o.strip()}
    unknown = args.ops - {"switch_pool", "unpool", "unit_max", "topk_merge"}
    if unknown:
        p.error(f"unknown ops: {', '.join(sorted(unknown))}")
    if args.repeats < 1 or args.batch < 1 or args.warmup < 0:
        p.error("--repeats and --batch must be at least 1, --warmup at least 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or available_cores()
    # Read by the OpenMP runtimes when they start, so set before torch or the extension loads one.
    os.environ["OMP_NUM_THREADS"] = str(threads)

    import torch
    import torch.nn.functional as F

    from cnnviz_fast import _C as C

    torch.set_num_threads(threads)
    C.set_num_threads(threads)
    info = C.build_info()
    ours_threads = C.get_num_threads()
    print(f"cnnviz_fast {info['version']} (OpenMP {'on' if info['openmp'] else 'off'}, {ours_threads} threads); "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); numpy {np.__version__}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {cpu_name()}, {available_cores()} cores usable, load average {load:.1f} at start; "
          f"batch {args.batch}, median of {args.repeats} after {args.warmup} warm-up")
    if ours_threads != threads or torch.get_num_threads() != threads:
        print(f"warning: asked for {threads} threads but the extension uses {ours_threads} and torch "
              f"{torch.get_num_threads()} (built without OpenMP?)")

    rng = np.random.default_rng(args.seed)
    rows = cpu_rows(C, torch, F, args, rng)
    print()
    print_cpu_table(rows)
    targeted = [r for r in rows if r["target"] is not None]
    failed = [r for r in targeted if r["result"] == "FAIL"]
    disagree = [r for r in rows if not r["same"]]
    print(f"\n{len(targeted) - len(failed)}/{len(targeted)} rows meet their target; "
          f"{'all rows agree with their baseline' if not disagree else f'{len(disagree)} rows DISAGREE with their baseline'}")

    result = dict(
        cpu=cpu_name(), cores=available_cores(), load_average_at_start=load, threads=threads, extension_threads=ours_threads,
        torch_threads=torch.get_num_threads(), torch=torch.__version__, numpy=np.__version__,
        build_info={k: v for k, v in info.items()}, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
        cpu_rows=rows,
    )

    if args.cuda:
        if not (info["cuda"] and C.cuda_device_count() > 0 and torch.cuda.is_available()):
            why = ("the extension was built without CUDA" if not info["cuda"]
                   else "no CUDA device is visible" if C.cuda_device_count() == 0
                   else "torch has no CUDA here")
            print(f"\n--cuda: skipped, {why}")
            result["cuda"] = dict(skipped=why)
        else:
            name = torch.cuda.get_device_name(0)
            crows, copy_gbs = cuda_rows(C, torch, F, args, rng)
            print_cuda_table(crows, copy_gbs, name)
            result["cuda"] = dict(device=name, copy_gb_s=copy_gbs, rows=crows)

    if args.json:
        gpu = result.get("cuda", {}).get("device")
        _common.write(args.json, [json_entry(args, result)], "cuda" if gpu else "cpu", gpu)
        print(f"\nwrote {args.json}")
    return 0


def json_entry(args, result) -> dict:
    """This run in the common benchmark format: one row per CPU (and CUDA) measurement."""
    rows = [_common.row(f"{r['op']} {r['net']} {r['layer']} {r['shape']}", "ms", r["ours_ms"], r["baseline_ms"],
                        r["baseline"], r["target"], agrees=r["same"]) for r in result["cpu_rows"]]
    for r in (result.get("cuda") or {}).get("rows", []):
        rows.append(_common.row(f"cuda {r['op']} {r['net']} {r['layer']} {r['shape']}", "ms", r["ours_ms"],
                                r["torch_ms"], "torch on the GPU", None, agrees=r["same"], gb_s=r["gb_s"],
                                copy_fraction=r["copy_fraction"]))
    config = {k: v for k, v in vars(args).items() if k != "json"}
    return _common.entry("kernels", config, rows, result)


if __name__ == "__main__":
    sys.exit(main())
