"""Mining heads, measured: in-graph ReduceMax/ArgMax vs raw taps reduced by the native unit_max.

    python benchmarks/heads.py [zfnet] [--batch 64] [--threads 2] [--repeats 5]
    cnnviz-fast bench heads [same options]

Runs are interleaved (graph, native, native+IOBinding, forward-only, ...) so that load from other
processes hits every variant alike; the table reports the fastest and the median seconds per
batch on the CPU EP, and the median process CPU seconds (threads do not spin, so on a shared
machine CPU time is the steadier measure of the work each variant does).
"forward only" is the same pruned network with a single tiny output: the floor for any heads.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _session(proto, threads: int):
    from cnnviz_fast import runtime

    # No busy-waiting threads: then process CPU time measures work, not waiting for a core.
    return runtime.session(proto, "cpu", threads=threads, spinning=False, what="a benchmark graph")


def bench_mining_heads(model, layers=None, batch: int = 64, threads: int = 2, repeats: int = 5,
                       seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """(fastest, median, median CPU) seconds per batch of `batch` random images for each way of getting the
    [N, C] maxima and positions."""
    from cnnviz_fast import _C

    layers = model.taps(layers)
    x = np.random.default_rng(seed).normal(size=(batch, *model.input_size)).astype(np.float32)
    feed = {model.input_name: x}
    graph = _session(model.mining_graph(layers, heads="graph"), threads)
    native = _session(model.mining_graph(layers, heads="native"), threads)
    last = layers[-1]
    floor = _session(model.mining_graph([last], heads="graph"), threads)
    tensors = [layer.tensor for layer in layers]

    binding = native.io_binding()
    buffers = {t: np.empty((batch, *s), np.float32) for t, s in
               ((layer.tensor, (layer.units, *layer.map_shape)) for layer in layers)}
    binding.bind_cpu_input(model.input_name, x)
    for t, buf in buffers.items():
        binding.bind_output(t, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)

    def run_graph():
        graph.run(None, feed)

    def run_native():
        for a in native.run(tensors, feed):
            _C.unit_max(a.reshape(a.shape[0], a.shape[1], -1, 1) if a.ndim == 2 else a)

    def run_native_bound():
        native.run_with_iobinding(binding)
        for a in buffers.values():
            _C.unit_max(a)

    def run_floor():
        floor.run(None, feed)

    variants = {"graph heads (ReduceMax/ArgMax)": run_graph, "native unit_max": run_native,
                "native unit_max + IOBinding": run_native_bound, f"forward only (to {last.name})": run_floor}
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up: allocations, thread pools, first-run kernels
    for _ in range(repeats):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: (min(v), statistics.median(v), statistics.median(cpu[name])) for name, v in times.items()}


def main(argv=None) -> int:
    from cnnviz_fast import Model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="zfnet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    random = args.model in ("zfnet", "alexnet", "vgg16")
    model = Model.load(args.model, random_weights=random)
    result = bench_mining_heads(model, batch=args.batch, threads=args.threads, repeats=args.repeats)
    base = result["graph heads (ReduceMax/ArgMax)"][0]
    print(f"{model.name}: batch {args.batch}, {model.input_size[1]}x{model.input_size[2]}, CPU EP, "
          f"{args.threads} threads, layers {', '.join(layer.name for layer in model.layers)}")
    base_cpu = result["graph heads (ReduceMax/ArgMax)"][2]
    print(f"  {'variant':34s} {'fastest':>9s} {'median':>9s} {'CPU':>9s} {'img/s':>7s}  "
          "vs graph heads (fastest, CPU)")
    for name, (best, median, cpu_s) in result.items():
        print(f"  {name:34s} {best * 1000:6.0f} ms {median * 1000:6.0f} ms {cpu_s * 1000:6.0f} ms "
              f"{args.batch / best:7.1f}  {best / base:5.2f}x {cpu_s / base_cpu:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
