"""Mining throughput from JPEG files, against a PyTorch eager baseline, in one run.

    python benchmarks/mining.py [--images 256] [--image-size 320] [--batch-size 32] [--workers N]
                                [--threads N] [--repeats 3] [--models zfnet,alexnet,resnet50] [--json PATH]
    python benchmarks/mining.py --rss [--rss-sizes 1000,10000]
    cnnviz-fast bench mining [same options]

For ZFNet and AlexNet (random weights, 224x224 input, all five conv layers, k=9) and ResNet-50
(random weights, its 17 default taps: conv1 and every block output), images per second over the
same generated JPEG files (`cnnviz_fast.datasets.synthetic`, square, decoded, resized to 256 and
centre-cropped to 224 from the model's metadata):

- ours end-to-end: `cnnviz_fast.mine()` into a fresh results.db (decode workers, ORT, top-k,
  statistics, checkpoints), timed from the start of decoding to the final checkpoint (model
  loading and session creation are left out, as they are for the baseline; the session's first
  run, which sizes its memory arena, is in, so short runs understate the steady rate);
- PyTorch eager end-to-end (the baseline): the same decode workers (the same `BatchLoader`, so the
  same decoded images and worker count) feeding the torch model (built with the same seed, so the
  same weights), forward hooks on the same layers (the five conv ReLUs; ResNet-50's conv1 ReLU and
  block outputs) taking each image's max over HxW and its position, and a running torch.topk merge
  per layer (state and batch concatenated, topk, gather); for ResNet-50 also the same in
  channels-last memory format (torch's faster CPU layout for it, reported, not the target's
  baseline);
- ours forward-only: the mining graph on one pre-decoded batch (uint8 crops, normalised in the
  graph, as `mine` feeds it), plus the top-k merge and the statistics, for both reductions
  (in-graph heads and native unit_max);
- ours forward-only (plain graph): the model's own graph (no taps, its logits the only output) in a
  session with the same options and the same uint8 input normalised in the graph: what the engine
  costs with nothing to mine, the bar for ResNet-50's "end-to-end >= 0.85x forward-only";
- PyTorch forward-only: the baseline's forward, hooks and merge on the same pre-decoded batch;
- decode-only: the decode workers alone, as threads producing uint8 crops (what `mine` uses), as
  processes (the same uint8 crops pickled back), and with JPEG draft mode.

Everything shares the cores (torch.set_num_threads and ORT intra-op threads = --threads, decode
workers = --workers). With --device cuda (a lent GPU) ours runs on the CUDA EP with IOBinding and
device-resident top-k and torch on the GPU; the pipeline target is then end-to-end >= 0.85x
decode-only. Variants run alternately within each repeat so load from other processes
falls on all of them. Each variant's median and best rate are reported, and the verdicts are
given for both: on a machine shared with other work the best of the repeats is the least
disturbed measurement. Targets (issue 7, this 2-core CPU): ours end-to-end >= 2.0x PyTorch for
ZFNet and >= 1.3x for AlexNet, and >= 0.85x min(forward-only, decode-only); issue 10: ResNet-50
end-to-end >= 1.3x PyTorch eager and >= 0.85x the plain graph's forward-only rate.

--rss runs `mine` over 1k and 10k generated images in fresh processes and reports each one's peak
resident memory (flat memory as the dataset grows); --rss-model picks the model.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, as a script or via `cnnviz-fast bench`
import _common  # noqa: E402

K = 9
TARGETS = {"zfnet": 2.0, "alexnet": 1.3, "resnet50": 1.3}
# Models whose pipeline bar is "end-to-end / plain-graph forward-only" (issue 10) rather than
# "end-to-end / min(forward-only with heads, decode-only)" (issue 7).
PLAIN_BAR = {"resnet50"}
PIPELINE_TARGET = 0.85


def available_cores() -> int:
    from cnnviz_fast.runtime import cores  # imports no native code: OMP_NUM_THREADS may still be set

    return cores()


cpu_name = _common.cpu_name


def make_images(root: Path, n: int, size: int) -> Path:
    from cnnviz_fast.datasets.synthetic import generate

    marker = root / f".done-{n}-{size}"
    if not marker.exists():
        generate(root, n, seed=0, size=size, quality=90)
        marker.touch()
    return root


def timed(fn) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


class TorchMiner:
    """The baseline: eager torch, forward hooks, per-image max over HxW, running torch.topk."""

    def __init__(self, name: str, layers: list[str], k: int = K, device: str = "cpu", channels_last: bool = False):
        import torch

        from cnnviz_fast import zoo

        torch.manual_seed(0)  # Model.load(name, random_weights=True, seed=0) exports these weights
        self.torch, self.k, self.device = torch, k, device
        self.net = zoo.build(name).eval().to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        modules = dict(self.net.taps())  # the zoo's layer names, the same as the exported graph's
        taps = [(n, modules[n]) for n in layers]
        self.batch_max: dict[str, tuple] = {}
        for layer, module in taps:
            module.register_forward_hook(self._hook(layer))
        self.layers = [layer for layer, _ in taps]
        self.reset()

    def _hook(self, layer):
        def hook(module, inputs, output):
            self.batch_max[layer] = output.flatten(2).max(dim=2)  # (values [B, C], first positions)
        return hook

    def reset(self) -> None:
        self.state = {}

    def step(self, images: np.ndarray, ids: np.ndarray) -> None:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device, non_blocking=True)
            self.net(x.contiguous(memory_format=self.memory_format))
            ids_t = torch.from_numpy(ids).to(self.device)
            for layer in self.layers:
                values, positions = self.batch_max[layer]
                cand_v, cand_i, cand_p = values.t(), ids_t.expand(values.shape[1], -1), positions.t()
                if layer in self.state:
                    sv, si, sp = self.state[layer]
                    cand_v, cand_i, cand_p = (torch.cat([sv, cand_v], 1), torch.cat([si, cand_i], 1),
                                              torch.cat([sp, cand_p], 1))
                top = cand_v.topk(min(self.k, cand_v.shape[1]), dim=1)
                self.state[layer] = (top.values, cand_i.gather(1, top.indices), cand_p.gather(1, top.indices))
        if self.device != "cpu":
            torch.cuda.synchronize()


_WORKER: dict = {}


def _init_decode_worker(data, pre_dict):
    from cnnviz_fast.data import Preprocess, open_manifest

    _WORKER["manifest"] = open_manifest(data)
    _WORKER["pre"] = Preprocess.from_dict(pre_dict)


def decode_chunk(span):
    """Process-pool decode: ids [start, stop) decoded in the worker, the arrays pickled back."""
    from cnnviz_fast.data import DecodeError, load_crop

    manifest, pre = _WORKER["manifest"], _WORKER["pre"]
    out = []
    for i in range(*span):
        try:
            out.append(load_crop(manifest.read(i), pre))
        except DecodeError:
            pass
    return np.stack(out) if out else None


def bench_model(name, data, args, results):
    from cnnviz_fast.data import BatchLoader, Preprocess, decode, decode_into, open_manifest
    from cnnviz_fast.mining import mine
    from cnnviz_fast.mining._optimize import UINT8_INPUT
    from cnnviz_fast.mining._session import ForwardSession
    from cnnviz_fast.mining._state import MiningState
    from cnnviz_fast.graph import Model

    model = Model.load(name, random_weights=True, seed=0)
    taps = model.taps([f"conv{i}" for i in range(1, 6)] if name in ("zfnet", "alexnet") else None)
    manifest = open_manifest(data)
    n = len(manifest)
    pre = Preprocess.from_metadata(model.preprocess, tuple(model.input_size[1:]))
    batch = np.stack([decode(manifest.read(i), pre) for i in range(args.batch_size)])  # torch's input
    crops = np.empty((args.batch_size, *pre.crop, 3), np.uint8)  # ours: what mine's workers produce
    for i in range(args.batch_size):
        decode_into(manifest.read(i), pre, crops[i])
    ids = np.arange(args.batch_size, dtype=np.int64)
    baseline = TorchMiner(name, [t.name for t in taps], device=args.device)
    channels_last = TorchMiner(name, [t.name for t in taps], device=args.device, channels_last=True) \
        if name in PLAIN_BAR else None
    sessions = {h: ForwardSession(model, taps, args.device, heads=h, threads=args.threads, uint8_input=pre,
                                  batch_size=args.batch_size) for h in ("graph", "native")}
    inputs = {}
    for h, s in sessions.items():  # page-locked on CUDA, as mine's batch buffers are
        inputs[h] = s.allocate(crops.shape, np.uint8)
        inputs[h][:] = crops
    plain = plain_session(model, pre, args)
    out_dir = Path(tempfile.mkdtemp(prefix="cnnviz-bench-"))

    def ours_e2e():
        s = mine(model, data, out_dir, layers=taps, top_k=K, batch_size=args.batch_size, workers=args.workers,
                 threads=args.threads, device=args.device, overwrite=True, progress="none", heads=args.heads)
        return s.images_per_second

    def torch_e2e(miner):
        def run():
            miner.reset()
            with BatchLoader(manifest, pre, args.batch_size, args.workers) as loader:
                for b in loader:
                    miner.step(b.images, b.ids)
            return n
        return run

    def plain_forward():
        done = 0
        while done < n:
            plain.run(None, {UINT8_INPUT: crops})
            done += len(crops)
        return done

    def ours_forward(heads):
        def run():
            state = MiningState(taps, K, args.device)
            s = sessions[heads]
            done = 0
            while done < n:
                state.update(s.run(inputs[heads]), ids + done, s.host)
                done += len(batch)
            return done
        return run

    def torch_forward():
        baseline.reset()
        done = 0
        while done < n:
            baseline.step(batch, ids + done)
            done += len(batch)
        return done

    variants = {
        "ours end-to-end": lambda: ours_e2e(),
        "PyTorch eager end-to-end": lambda: timed(torch_e2e(baseline)),
        "ours forward-only (graph heads)": lambda: timed(ours_forward("graph")),
        "ours forward-only (native heads)": lambda: timed(ours_forward("native")),
        "ours forward-only (plain graph)": lambda: timed(plain_forward),
        "PyTorch forward-only": lambda: timed(torch_forward),
    }
    if channels_last is not None:
        variants["PyTorch eager end-to-end (channels-last)"] = lambda: timed(torch_e2e(channels_last))
    ours_forward("graph")()  # warm-up: ORT's first runs plan memory and pack weights
    ours_forward("native")()
    plain_forward()
    torch_forward()
    ours_e2e()  # and mine's own session, created afresh in each call
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for v in order:
            rates[v].append(variants[v]())
    results[name] = rates
    for s in sessions.values():
        s.close()


def plain_session(model, pre, args):
    """The model's own graph (logits out, nothing tapped) with uint8 input normalised in the graph,
    in a session with mine's options: the engine's forward-only rate."""
    import onnx

    from cnnviz_fast import runtime
    from cnnviz_fast.mining._optimize import rewrite_lrn, uint8_input_graph

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    if args.device == "cpu":
        proto, _ = rewrite_lrn(proto)
    proto = uint8_input_graph(proto, model.input_name, pre)
    return runtime.session(proto, args.device, threads=args.threads, arena="session", spinning=False,
                           mem_pattern=True, stream=None, what=f"the plain graph of {model.name}")


def bench_decode(data, args, results):
    from cnnviz_fast.data import BatchLoader, Preprocess, open_manifest
    from cnnviz_fast.graph import Model

    model = Model.load("alexnet", random_weights=True, seed=0)
    manifest = open_manifest(data)
    n = len(manifest)

    def threads(draft):
        pre = Preprocess.from_metadata(model.preprocess, tuple(model.input_size[1:]), draft=draft)

        def run():
            with BatchLoader(manifest, pre, args.batch_size, args.workers, layout="uint8") as loader:
                return sum(len(b.ids) for b in loader)
        return run

    pre = Preprocess.from_metadata(model.preprocess, tuple(model.input_size[1:]))
    spans = [(s, min(s + args.batch_size, n)) for s in range(0, n, args.batch_size)]
    pool = ProcessPoolExecutor(args.workers, initializer=_init_decode_worker, initargs=(str(data), pre.to_dict()))
    list(pool.map(decode_chunk, spans[:args.workers]))  # start the workers outside the timing

    def processes():
        return sum(len(a) for a in pool.map(decode_chunk, spans) if a is not None)

    variants = {"decode-only (threads)": threads(False), "decode-only (processes)": processes,
                "decode-only (threads, JPEG draft)": threads(True)}
    threads(False)()
    rates = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            rates[v].append(timed(variants[v]))
    pool.shutdown()
    results["decode"] = rates


def report(results, args, lines):
    """Rows with the median and best rate of each variant; verdicts on both statistics."""
    stats = {"median": statistics.median, "best": max}
    pick = {key: {group: {v: f(r) for v, r in rows.items()} for group, rows in results.items()}
            for key, f in stats.items()}
    verdict = {}
    for name in args.models:
        lines.append(f"{name:<40} {'median':>9} {'best':>9}  img/s")
        for v in results[name]:
            lines.append(f"  {v:<38} {pick['median'][name][v]:9.1f} {pick['best'][name][v]:9.1f}")
        target = TARGETS.get(name, 1.0)
        for key in stats:
            r, dec = pick[key][name], pick[key]["decode"]["decode-only (threads)"]
            ours, base = r["ours end-to-end"], r["PyTorch eager end-to-end"]
            fwd = r[f"ours forward-only ({used_heads(args) } heads)"]
            ratio = ours / base
            if args.device == "cuda":  # on a GPU the bar is decode-only: the GPU must keep up
                pr, what = ours / dec, f"end-to-end / decode-only ({dec:.1f})"
            elif name in PLAIN_BAR:
                plain = r["ours forward-only (plain graph)"]
                pr, what = ours / plain, f"end-to-end / plain-graph forward-only ({plain:.1f})"
            else:
                pr, what = ours / min(fwd, dec), f"end-to-end / min(forward-only {fwd:.1f}, decode-only {dec:.1f})"
            ok1, ok2 = ratio >= target, pr >= PIPELINE_TARGET
            verdict[(name, key)] = ok1 and ok2
            lines.append(f"  [{key}] ours / PyTorch end-to-end = {ratio:.2f}x (target >= {target}x) "
                         f"{'PASS' if ok1 else 'FAIL'}; {what} = {pr:.2f} (target >= {PIPELINE_TARGET}) "
                         f"{'PASS' if ok2 else 'FAIL'}")
        g, nat = pick["median"][name]["ours forward-only (graph heads)"], pick["median"][name]["ours forward-only (native heads)"]
        plain = pick["median"][name]["ours forward-only (plain graph)"]
        lines.append(f"  in-graph heads / native unit_max, forward-only (median): {g / nat:.2f}x; "
                     f"native heads / plain graph: {nat / plain:.2f}; graph heads / plain graph: {g / plain:.2f}")
    lines.append(f"{'decode':<40} {'median':>9} {'best':>9}  img/s")
    for v in results["decode"]:
        lines.append(f"  {v:<38} {pick['median']['decode'][v]:9.1f} {pick['best']['decode'][v]:9.1f}")
    return all(verdict.values()), pick


def used_heads(args) -> str:
    """The heads `mine` runs with: "auto" is native on the CPU and graph on CUDA (mining._session)."""
    if args.heads != "auto":
        return args.heads
    return "graph" if args.device == "cuda" else "native"


def rss(args) -> int:
    """Peak RSS of `mine` over 1k and 10k images, each in a fresh process."""
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="cnnviz-rss-"))
    if args.rss_model == "small":
        model_path = root / "small.onnx"
        if not model_path.exists():
            _export_small(model_path)
        model, what = str(model_path), "a small 3-conv CNN, 56x56 input"
    else:
        from cnnviz_fast.graph import Model

        model = str(Model.load(args.rss_model, random_weights=True, seed=0).path)
        what = f"{args.rss_model}, random weights, 224x224 input, conv1..conv5"
    sizes = [int(s) for s in args.rss_sizes.split(",")]
    images = make_images(root / "images", max(sizes), 64)
    files = sorted(p for p in images.rglob("*.jpg"))
    print(f"peak RSS of `mine` ({what}; 64px JPEGs, batch {args.batch_size}, {args.workers} workers), "
          "each in a fresh process:")
    for n in sizes:
        listing = root / f"list-{n}.txt"
        listing.write_text("".join(f"{p}\n" for p in files[:n]))
        code = (f"import resource; from cnnviz_fast.mining import mine; "
                f"s = mine({model!r}, {str(listing)!r}, {str(root / f'out-{n}')!r}, overwrite=True, "
                f"batch_size={args.batch_size}, workers={args.workers}, progress='none'); "
                f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, s.images_per_second)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        kb, rate = r.stdout.split()
        print(f"  {n:>7,} images: peak RSS {int(kb) / 1024:7.1f} MiB   ({float(rate):.0f} img/s)")
    return 0


def _export_small(path: Path) -> None:
    import torch
    from torch import nn

    from cnnviz_fast.zoo.export import export_onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU())
    pre = {"resize": 64, "crop": 56, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "channel_order": "RGB", "scale": 255.0}
    export_onnx(net, path, input_size=(3, 56, 56), layer_names=["conv1", "conv2", "conv3"], preprocess=pre,
                model_name="small")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cnnviz-fast bench mining", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="JPEG files per measurement (default 256)")
    p.add_argument("--image-size", type=int, default=320, help="side of the square JPEGs (default 320)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=available_cores(), help="decode workers (default: cores)")
    p.add_argument("--threads", type=int, default=available_cores(), help="ORT / torch threads (default: cores)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each variant, interleaved (default 3)")
    p.add_argument("--models", default="zfnet,alexnet")
    p.add_argument("--heads", choices=["auto", "graph", "native"], default="auto",
                   help="heads used by ours end-to-end (default auto: what mine uses)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: ours on the CUDA EP with device-resident top-k, torch on the GPU")
    p.add_argument("--data-dir", help="where to generate (and keep) the JPEGs (default: a temporary folder)")
    p.add_argument("--json", help="also write the numbers to this file (the format of benchmarks/_common.py)")
    p.add_argument("--rss", action="store_true", help="measure peak RSS at --rss-sizes images instead")
    p.add_argument("--rss-sizes", default="1000,10000")
    p.add_argument("--rss-model", default="small", help="small (a 3-conv CNN exported here), zfnet or alexnet")
    args = p.parse_args(argv)
    if args.rss:
        return rss(args)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="cnnviz-bench-data-"))
    data = make_images(root, args.images, args.image_size)
    lines = [f"mining benchmark: {args.images} JPEG files {args.image_size}x{args.image_size} (synthetic) -> 224x224, "
             f"batch {args.batch_size}, {args.workers} decode workers, {args.threads} threads, k={K}, conv1..conv5, "
             f"{args.repeats} interleaved repeats",
             f"CPU: {cpu_name()}, {available_cores()} cores available; torch {torch.__version__}; device {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")]
    results: dict = {}
    bench_decode(data, args, results)
    for name in args.models:
        bench_model(name, data, args, results)
    ok, summary = report(results, args, lines)
    print("\n".join(lines))
    if args.json:
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
        _common.write(args.json, [json_entry(args, results, summary, ok)], args.device, gpu)
    return 0 if ok else 1


def json_entry(args, results, pick, ok) -> dict:
    """This run in the common benchmark format: medians as the figures, the best of the repeats in
    `extra`; the end-to-end rows carry the issue's targets."""
    med, best = pick["median"], pick["best"]
    rows = []
    for name in args.models:
        r, b = med[name], best[name]
        rows.append(_common.row(f"mining end to end, {name}", "img/s", r["ours end-to-end"],
                                r["PyTorch eager end-to-end"], "PyTorch eager hooks + topk", TARGETS.get(name, 1.0),
                                best_ours=b["ours end-to-end"], best_baseline=b["PyTorch eager end-to-end"]))
        if name in PLAIN_BAR:
            v = "ours forward-only (plain graph)"
            rows.append(_common.row(f"mining end to end vs the plain graph's forward-only, {name}", "img/s",
                                    r["ours end-to-end"], r[v], "ours forward-only (plain graph, nothing mined)",
                                    PIPELINE_TARGET))
            rows.append(_common.row(f"mining end to end, {name}, vs channels-last torch", "img/s",
                                    r["ours end-to-end"], r["PyTorch eager end-to-end (channels-last)"],
                                    "PyTorch eager channels-last hooks + topk", None))
        for heads in ("graph", "native"):
            v = f"ours forward-only ({heads} heads)"
            rows.append(_common.row(f"mining forward-only, {name}, {heads} heads", "img/s", r[v],
                                    r["PyTorch forward-only"], "PyTorch forward + hooks + topk", None,
                                    best_ours=b[v], best_baseline=b["PyTorch forward-only"]))
        rows.append(_common.row(f"plain-graph forward-only, {name}", "img/s", r["ours forward-only (plain graph)"],
                                best=b["ours forward-only (plain graph)"]))
    for v, rate in med["decode"].items():
        rows.append(_common.row(v, "img/s", rate, best=best["decode"][v]))
    config = {k: v for k, v in vars(args).items() if k not in ("json", "data_dir")}
    return _common.entry("mining", config, rows, {"rates": results, "summary": pick}, passed=ok)


if __name__ == "__main__":
    sys.exit(main())
