"""Mining on a local Ray cluster against the plain single process, on the same images, in one run.

    python benchmarks/cluster.py [--images 3000] [--image-size 64] [--model demo] [--batch-size 32]
                                 [--shard-images 512] [--repeats 1] [--json PATH]
    cnnviz-fast bench cluster [same options]

Side by side (issue 12), over the same generated JPEG files (`cnnviz_fast.datasets.synthetic`):

- `--ray local:1` (one worker of all the cores' threads) against the single process with the same
  threads: the cluster's overhead; target >= 0.9x the single process's img/s;
- `--ray local:2` with one thread each against one process with two threads;
- the scaling curve local:1, 2, 4, ... up to the cores (or GPUs) this machine has.

Rates: the single process's is `mine()`'s own (images over the time from its first batch to its
last checkpoint; model loading and session creation left out). For a cluster run two rates are
given: "steady", images over the busiest worker's time inside its shards (from results.db's
shards table: the workers' mining rate, worker start-up left out as the single process's
session creation is), which the verdict uses, and "call", images over the whole `mine()` call
(starting the workers, sending the model, every shard's round trip and checkpoint), which is what a
short run sees; on a long run the two meet. Starting the Ray cluster itself (`ray.init`, tens of
seconds on a loaded 2-core machine) is outside both. Variants alternate within each repeat, so
load from other processes falls on all of them; the best of the repeats is reported.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

OVERHEAD_TARGET = 0.9


def _single(model, data, out: Path, threads: int, args) -> dict:
    from cnnviz_fast.mining import mine

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = mine(model, data, out, batch_size=args.batch_size, threads=threads, workers=threads, progress="none",
             device=args.device)
    call = time.perf_counter() - t0
    return {"rate": s.images_per_second, "call_rate": s.processed / call, "images": s.processed}


def _cluster(model, data, out: Path, workers: int, threads: int, args) -> dict:
    """One run on a fresh local cluster of `workers` slots of `threads` CPUs (started outside the timing)."""
    import ray

    from cnnviz_fast.cluster import mine

    shutil.rmtree(out, ignore_errors=True)
    ray.init(address="local", num_cpus=workers * threads, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 ** 2, logging_level="ERROR")
    try:
        t0 = time.perf_counter()
        s = mine(model, data, out, ray="auto", batch_size=args.batch_size, shard_images=args.shard_images,
                 threads=threads, workers=threads, progress="none", device=args.device)
        call = time.perf_counter() - t0
    finally:
        ray.shutdown()
    con = sqlite3.connect(out / "results.db")
    try:
        busy = con.execute("SELECT worker, SUM(seconds) FROM shards GROUP BY worker").fetchall()
    finally:
        con.close()
    steady = s.processed / max(t for _, t in busy)
    return {"rate": steady, "call_rate": s.processed / call, "images": s.processed, "workers": len(busy)}


def _best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["rate"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cnnviz-fast bench cluster", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model", default="demo", help="an .onnx file, `demo` (default), or a zoo name (zfnet, "
                   "alexnet, vgg16: random weights)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-images", type=int, default=512)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print('this benchmark needs Ray: pip install "cnnviz_fast[ray]"', file=sys.stderr)
        return 2
    from cnnviz_fast.datasets.synthetic import generate
    from cnnviz_fast.runtime import cores, gpu_count

    from cnnviz_fast.graph import Model
    from cnnviz_fast.graph.model import ZOO_NAMES

    model = Model.load(args.model, random_weights=args.model.removeprefix("zoo:") in ZOO_NAMES)
    n_cores = cores()
    slots = gpu_count()[0] if args.device == "cuda" else n_cores
    tmp = Path(tempfile.mkdtemp(prefix="cnnviz-bench-cluster-"))
    try:
        data = tmp / "images"
        generate(data, args.images, seed=0, size=args.image_size)
        print(f"{args.images} images of {args.image_size}px, model {args.model}, batch {args.batch_size}, shards of "
              f"{args.shard_images}, {n_cores} cores, device {args.device}", flush=True)
        whole = f"single, {n_cores} thread(s)"
        plan = [(whole, "single", 1, n_cores), (f"ray local:1, {n_cores} thread(s)", "ray", 1, n_cores)]
        if n_cores > 2:  # on 2 cores the single process with two threads is the first variant
            plan.append(("single, 2 threads", "single", 1, 2))
        if n_cores >= 2:
            plan.append(("ray local:2, 1 thread each", "ray", 2, 1))
        # The scaling curve: local:n with cores/n threads each (local:2 on 2 cores is the variant above).
        curve = [n for n in (2 ** i for i in range(1, 8)) if n <= slots and not (n == 2 and n_cores == 2)]
        plan += [(f"ray local:{n}, {max(1, n_cores // n)} thread(s) each", "ray", n, max(1, n_cores // n)) for n in curve]
        runs: dict[str, list[dict]] = {name: [] for name, *_ in plan}
        for rep in range(args.repeats):
            for name, kind, workers, threads in plan:
                out = tmp / "out"
                r = (_single(model, data, out, threads, args) if kind == "single"
                     else _cluster(model, data, out, workers, threads, args))
                runs[name].append(r)
                print(f"  [{rep + 1}/{args.repeats}] {name:32s} {r['rate']:8.1f} img/s (call {r['call_rate']:.1f})",
                      flush=True)
        best = {name: _best(rs) for name, rs in runs.items()}
        print("\nvariant                           steady img/s   call img/s")
        for name in best:
            print(f"{name:34s} {best[name]['rate']:12.1f} {best[name]['call_rate']:12.1f}")
        summary = {}
        pairs = [(f"ray local:1, {n_cores} thread(s)", whole, "overhead local:1 / single")]
        if n_cores >= 2:
            pairs.append(("ray local:2, 1 thread each", "single, 2 threads" if n_cores > 2 else whole,
                          "local:2 x 1 thread / single x 2 threads"))
        for a, b, what in pairs:
            ratio, call_ratio = best[a]["rate"] / best[b]["rate"], best[a]["call_rate"] / best[b]["call_rate"]
            summary[what] = {"steady": ratio, "call": call_ratio}
            verdict = "" if "overhead" not in what else (
                f"  target >= {OVERHEAD_TARGET}: {'met' if ratio >= OVERHEAD_TARGET else 'NOT met'}")
            print(f"{what}: {ratio:.2f}x steady, {call_ratio:.2f}x call{verdict}")
        if curve:
            base = best[f"ray local:1, {n_cores} thread(s)"]["rate"]
            print("scaling against local:1: " + ", ".join(f"{name.split(',')[0][4:]} {best[name]['rate'] / base:.2f}x"
                                                          for name, kind, _, _ in plan if kind == "ray"))
        if args.json:
            Path(args.json).write_text(json.dumps({"config": vars(args), "cores": n_cores, "runs": runs,
                                                   "summary": summary}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
