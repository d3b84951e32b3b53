"""`cnnviz-fast mine MODEL DATA --out DIR`: the command-line face of `cnnviz_fast.mine`.

Exit status: 0 done (or nothing to do), 2 a problem the user can fix (message, no traceback),
3 more images failed than --max-error-rate allows (results written), 130 interrupted.
Also runnable as `python -m cnnviz_fast._cli_mine MODEL DATA --out DIR ...`.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `mine` subcommand to an argparse subparsers object; returns its parser."""
    s = subparsers.add_parser(
        "mine", help="pass 1: top-k images per unit into DIR/results.db (resumable)",
        description="Stream DATA through MODEL and keep, for every unit of the chosen layers, the k "
                    "images that excite it most, with per-unit statistics, in DIR/results.db. Run the "
                    "same command again to resume an interrupted run.")
    _add_arguments(s)
    s.set_defaults(func=run)
    return s


def _add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("model", metavar="MODEL", help="an .onnx file, `demo`, or zoo:NAME (zfnet, alexnet, vgg16) with --weights")
    s.add_argument("data", metavar="DATA", help="a folder tree of images, a text file listing image paths, "
                   "or tar shards such as 'shard-{000000..000146}.tar'")
    s.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (results.db goes there)")
    s.add_argument("--layers", default=None, help="'all', or comma-separated layer names (default: the ReLU after each Conv)")
    s.add_argument("--top-k", type=int, default=9, help="images kept per unit (default 9)")
    s.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32; part of the "
                   "run's configuration, so keep it when resuming)")
    s.add_argument("--workers", type=int, default=None, help="decode threads (default: one per core)")
    s.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: one per core)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    w = s.add_mutually_exclusive_group()
    w.add_argument("--weights", help="local weights file for a zoo model (.pth/.pt/.safetensors)")
    w.add_argument("--random-weights", action="store_true", help="untrained zoo model (tests, benchmarks)")
    s.add_argument("--overwrite", action="store_true", help="replace a run of another configuration in DIR")
    s.add_argument("--max-error-rate", type=float, default=None, metavar="R",
                   help="exit with status 3 when more than this share (0..1) of the images cannot be used")
    s.add_argument("--checkpoint-every", type=int, default=10_000, metavar="N", help="checkpoint every N images (default 10000)")
    s.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="T", help="... or every T seconds (default 60)")
    s.add_argument("--draft", action="store_true", help="JPEG draft decoding: faster on large JPEGs, slightly different pixels")
    s.add_argument("--heads", choices=["auto", "graph", "native"], default="auto",
                   help="reduce maps in the graph (ReduceMax/ArgMax) or with the native unit_max")
    p = s.add_mutually_exclusive_group()
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="a bar on a terminal, plain lines otherwise (default auto)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace) -> int:
    """Run `mine` for parsed arguments; returns the exit status."""
    from .mining import ErrorRateExceeded, MiningError, mine

    try:
        mine(args.model, args.data, args.out, layers=args.layers, top_k=args.top_k, batch_size=args.batch_size,
             workers=args.workers, threads=args.threads, device=args.device, weights=args.weights,
             random_weights=args.random_weights, overwrite=args.overwrite, max_error_rate=args.max_error_rate,
             checkpoint_images=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds,
             draft=args.draft, heads=args.heads, progress="none" if args.quiet else args.progress)
    except ErrorRateExceeded as exc:
        print(f"cnnviz-fast mine: {exc}", file=sys.stderr)
        return 3
    except MiningError as exc:
        print(f"cnnviz-fast mine: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cnnviz-fast mine", description=__doc__.splitlines()[0])
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
