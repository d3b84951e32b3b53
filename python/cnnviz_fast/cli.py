"""The `cnnviz-fast` command line, also `python -m cnnviz_fast`: a thin skin that parses the
arguments, calls the library (`mine`, `project`, `report`, `demo`) and maps its exceptions to exit
statuses in one table, `EXIT_CODES`.

Exit status: 0 done (or nothing to do); 2 a problem the user can fix (a message, no traceback);
3 more images failed than --max-error-rate allows (results written), or projections are done but
some top-k entries are stale (the data or model changed after mining; they are listed);
130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM (mine and project write what they have first
and say how to resume).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .demo import DEMO_IMAGES
from .errors import MAX_ERROR_RATE, CnnvizError, ErrorRateExceeded
from .runtime import DEVICES

# Exception class -> exit status, the first matching row wins (so subclasses before their bases).
# OSError: a folder that cannot be written, a full disk: the user's to fix, not a traceback.
EXIT_CODES = [(ErrorRateExceeded, 3), (CnnvizError, 2), (OSError, 2)]
EXIT_INTERRUPTED = 130
EXIT_STALE = 3  # `project` and `run` finished, but some entries are stale (an outcome, not an exception)


# API parameter -> CLI flag where the flag is not "--" + the name with dashes (errors.CnnvizError.params).
FLAGS = {"checkpoint_images": "--checkpoint-every", "checkpoint_seconds": "--checkpoint-seconds"}


def cli_message(exc: BaseException) -> str:
    """str(exc) with each parameter it names (`exc.params`, spelled as in the Python API) written as
    this CLI's flag: "top_k" -> "--top-k", "weights=FILE" -> "--weights FILE",
    "random_weights=True" -> "--random-weights", "device='cuda'" -> "--device cuda"."""
    text = str(exc)
    for param in sorted(getattr(exc, "params", ()), key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w=])", lambda _m, p=param: _flag(p), text)
    return text


def _flag(param: str) -> str:
    name, eq, value = param.partition("=")
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    if not eq or value == "True":
        return flag
    return f"{flag} {value.strip(chr(39) + chr(34))}"


def exit_code(exc: BaseException) -> int | None:
    """The exit status for an exception, or None when it is not a user's problem (a bug: traceback)."""
    if isinstance(exc, KeyboardInterrupt):
        return getattr(exc, "exit_status", EXIT_INTERRUPTED)
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), None)


# Benchmarks live in the source tree next to the package (python/cnnviz_fast/ -> benchmarks/).
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _progress(args: argparse.Namespace) -> str:
    return "none" if args.quiet else args.progress


def _mine(args: argparse.Namespace) -> None:
    from .mining import mine

    mine(args.model, args.data, args.out, layers=args.layers, top_k=args.top_k, batch_size=args.batch_size,
         workers=args.workers, threads=args.threads, device=args.device, weights=args.weights,
         random_weights=args.random_weights, overwrite=args.overwrite, max_error_rate=args.max_error_rate,
         checkpoint_images=args.checkpoint_every, checkpoint_seconds=args.checkpoint_seconds,
         draft=args.draft, heads=args.heads, limit=args.limit, preprocess=args.preprocess, progress=_progress(args),
         ray=args.ray, shard_images=args.shard_images)


def _project(args: argparse.Namespace, **options) -> int:
    """Run the projection pass; a stale entry is a warning that goes to stderr even with --quiet."""
    from .projection import project

    summary = project(args.out, device=args.device, mode=args.mode, save_arrays=args.save_arrays,
                      progress=_progress(args), ray=args.ray, **options)
    if summary.stale:
        print(summary, file=sys.stderr)
        return EXIT_STALE
    if not args.quiet:
        print(summary)
    return 0


def _report(args: argparse.Namespace, **options) -> None:
    from .reporting import report, unprojected_layers

    index = report(args.out, **options)
    missing = unprojected_layers(args.out)
    if missing:  # a warning: on stderr even with --quiet; the report is written all the same
        print(f"cnnviz-fast report: not projected yet: {', '.join(missing)}; their pages have statistics but no "
              f"pictures. Run `cnnviz-fast project {args.out}` first, then report again.", file=sys.stderr)
    if not args.quiet:
        print(f"report: {index.resolve().as_uri()}")


def _cmd_mine(args: argparse.Namespace) -> int:
    _mine(args)
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    return _project(args, layers=args.layers, model=args.model, batch_size=args.batch_size, force=args.force)


def _cmd_report(args: argparse.Namespace) -> int:
    _report(args, montage_units=args.montage_units, relative_paths=args.relative_paths)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """mine, then project every mined layer, then report; the project and report options that
    `run` does not offer keep the library's defaults."""
    _mine(args)
    status = _project(args)
    _report(args)
    return status


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    demo(args.out, images=args.images, device=args.device, quiet=args.quiet)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import onnxruntime as ort

    from . import __version__
    from .runtime import build_info, gpu_count, native_cuda_blocker, ort_cuda_status

    info = build_info()
    _, gpu_why = gpu_count()
    native = native_cuda_blocker()
    ort_ok, ort_why = ort_cuda_status()
    cuda = (f"compiled for {', '.join(info['cuda_archs'])} with nvcc {info['cuda_compiler_version']}"
            if info["cuda"] else "not compiled")
    openmp = f"yes ({info['openmp_threads']} threads)" if info["openmp"] else "no"
    print("\n".join([
        f"cnnviz_fast {__version__} (native {info['version']}), Python {platform.python_version()} "
        f"on {platform.machine()}",
        f"native build: CUDA kernels {cuda}; OpenMP {openmp}; DLPack {info['dlpack_version']}",
        f"GPU: {gpu_why}",
        f"native CUDA kernels usable: {'yes' if native is None else 'no (' + native + ')'}",
        f"ONNX Runtime {ort.__version__}: providers {', '.join(ort.get_available_providers())}",
        f"ONNX Runtime CUDA EP usable: {'yes' if ort_ok else 'no'} ({ort_why})",
    ]))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = BENCHMARKS / f"{args.suite}.py"
    if not script.is_file():
        raise CnnvizError(f"{script} not found: the benchmarks run from a source checkout")
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _cmd_zoo_export(args: argparse.Namespace) -> int:
    from .zoo import export_zoo

    try:
        export_zoo(args.name, args.output, weights=args.weights, random_weights=args.random_weights, seed=args.seed)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as exc:
        # The zoo (plain PyTorch code under models/) raises builtin errors for bad weights or no torch.
        raise CnnvizError(str(exc)) from None
    print(f"wrote {args.output}")
    return 0


def bench_suites() -> list[str]:
    """The suites `bench` can run: the scripts in benchmarks/ (none outside a source checkout)."""
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def _device(s) -> None:
    s.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to run: auto (CUDA when it is usable, else CPU), cpu or cuda (default auto)")


def _progress_options(s) -> None:
    p = s.add_mutually_exclusive_group()
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="a bar on a terminal, plain lines otherwise (default auto)")
    _quiet(p)


def _quiet(s) -> None:
    s.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and warnings")


def _mode(s) -> None:
    from .graph import MODES

    s.add_argument("--mode", choices=MODES, default="deconvnet", help="projection rule (default deconvnet)")


def _save_arrays(s) -> None:
    s.add_argument("--save-arrays", action="store_true", help="also write float16 recon.npy / patches.npy per layer")


def _ray_option(s) -> None:
    s.add_argument("--ray", default=None, metavar="CLUSTER",
                   help="run on a Ray cluster: local:N (N workers on this machine), auto (the cluster `ray start` "
                        "made here), or ray://host:port; needs pip install \"cnnviz_fast[ray]\"")


def _mine_options(s) -> None:
    from .zoo import ZOO

    s.add_argument("model", metavar="MODEL", help=f"an .onnx file, `demo`, or zoo:NAME ({', '.join(ZOO)}) "
                   "with --weights")
    s.add_argument("data", metavar="DATA", help="a folder tree of images, a text file listing image paths, "
                   "or tar shards such as 'shard-{000000..000146}.tar'")
    s.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (results.db goes there)")
    s.add_argument("--layers", default=None, help="'all', or comma-separated layer names (default: the ReLU "
                   "after each Conv)")
    s.add_argument("--top-k", type=int, default=9, help="images kept per unit (default 9)")
    s.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32; part of the "
                   "run's configuration, so keep it when resuming)")
    s.add_argument("--workers", type=int, default=None, help="decode threads (default: one per core)")
    s.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: one per core)")
    _device(s)
    w = s.add_mutually_exclusive_group()
    w.add_argument("--weights", help="local weights file for a zoo model (.pth/.pt/.safetensors)")
    w.add_argument("--random-weights", action="store_true", help="untrained zoo model (tests, benchmarks)")
    s.add_argument("--overwrite", action="store_true", help="replace a run of another configuration in DIR")
    s.add_argument("--max-error-rate", type=float, default=MAX_ERROR_RATE, metavar="R",
                   help="stop and exit with status 3 when more than this share (0..1) of the images cannot be "
                        f"used (default {MAX_ERROR_RATE}; 1 never stops)")
    s.add_argument("--checkpoint-every", type=int, default=10_000, metavar="N",
                   help="checkpoint every N images (default 10000)")
    s.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="T",
                   help="... or every T seconds (default 60)")
    s.add_argument("--preprocess", default=None, metavar="JSON-or-FILE",
                   help="preprocessing instead of the model file's: JSON such as '{\"scale\": 1, \"mean\": [0, 0, 0], "
                        "\"std\": [1, 1, 1]}' or a JSON file; keys as the cnnviz.preprocess metadata (README, Models)")
    s.add_argument("--draft", action="store_true", help="JPEG draft decoding: faster on large JPEGs, slightly "
                   "different pixels")
    s.add_argument("--heads", choices=["auto", "graph", "native"], default="auto",
                   help="reduce maps in the graph (ReduceMax/ArgMax) or with the native unit_max (auto: native on "
                        "the CPU, graph on CUDA)")
    s.add_argument("--limit", type=int, default=None, metavar="N",
                   help="mine a fixed sample of N images, evenly spaced over DATA (the same every time; part of "
                        "the configuration), for a quick look before the full run")
    _ray_option(s)
    s.add_argument("--shard-images", type=int, default=None, metavar="N",
                   help="with --ray: images per shard handed to a worker (default 4096; part of the run's "
                        "configuration)")
    _progress_options(s)


def _project_options(s) -> None:
    s.add_argument("out", metavar="DIR", help="a folder mined with `cnnviz-fast mine`")
    s.add_argument("--layers", default=None, help="comma-separated mined layers (default: all mined layers)")
    s.add_argument("--model", default=None, help="the mined model's file, when it is no longer where results.db says")
    _device(s)
    _mode(s)
    s.add_argument("--batch-size", type=int, default=256, help="seeds per reverse pass (default 256)")
    _save_arrays(s)
    s.add_argument("--force", action="store_true", help="redo layers that are already done")
    _ray_option(s)
    _progress_options(s)


def _zoo_export_options(s) -> None:
    from .zoo import ZOO

    s.add_argument("name", choices=tuple(ZOO))
    s.add_argument("-o", "--output", required=True)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--weights", help="local .pth/.pt or .safetensors file with the model's state dict")
    g.add_argument("--random-weights", action="store_true", help="random initialisation (for tests and benchmarks)")
    s.add_argument("--seed", type=int, default=0, help="seed for --random-weights")


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; each parsed Namespace carries its command's function (`func`) and name
    (`command_name`). Options shared by commands are added by one function each (`run` has all of
    `mine`'s, plus project's --mode and --save-arrays); defaults equal the library functions'
    (tests/test_cli.py holds them equal)."""
    p = argparse.ArgumentParser(prog="cnnviz-fast", description="What each unit of a CNN has learned "
                                "(Zeiler & Fergus deconvnet). Also runnable as `python -m cnnviz_fast`.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, func, full: str | None = None, **kw) -> argparse.ArgumentParser:
        s = parent.add_parser(name, **kw)
        s.set_defaults(func=func, command_name=full or name)
        return s

    _mine_options(command(
        sub, "mine", _cmd_mine, help="pass 1: top-k images per unit into DIR/results.db (resumable)",
        description="Stream DATA through MODEL and keep, for every unit of the chosen layers, the k images "
                    "that excite it most, with per-unit statistics, in DIR/results.db. Run the same command "
                    "again to resume an interrupted run."))
    _project_options(command(
        sub, "project", _cmd_project, help="pass 2: project every top-k entry back to pixels (DIR/projections/)",
        description="Re-forward the images of DIR/results.db that made some top-k, project each activation "
                    "back to pixels with the deconvnet, cut the matching patches, and write per-unit grids "
                    "to DIR/projections/<layer>/. Finished layers are skipped when run again."))
    s = command(sub, "report", _cmd_report, help="pass 3: write the static HTML report DIR/report/",
                description="Write DIR/report/index.html (opens from file://, no server).")
    s.add_argument("out", metavar="DIR", help="a mined (and, for the pictures, projected) folder")
    s.add_argument("--montage-units", type=int, default=16, metavar="N", help="units per layer montage (default 16)")
    s.add_argument("--relative-paths", action="store_true", help="show image paths relative to the dataset root "
                   "(for a report that is shared)")
    _quiet(s)

    s = command(sub, "run", _cmd_run, help="mine, project and report in one go",
                description="`mine MODEL DATA --out DIR`, then `project DIR`, then `report DIR`.")
    _mine_options(s)
    _mode(s)
    _save_arrays(s)

    s = command(sub, "demo", _cmd_demo, help="the whole pipeline on generated images with the shipped demo model",
                description="Generate a deterministic image set, mine it with the shipped demo model, project, "
                            "and write the report.")
    s.add_argument("--out", "-o", default="cnnviz-demo", metavar="DIR", help="output folder (default ./cnnviz-demo)")
    s.add_argument("--images", type=int, default=DEMO_IMAGES, help=f"images to generate (default {DEMO_IMAGES})")
    _device(s)
    _quiet(s)

    command(sub, "info", _cmd_info, help="native build, ONNX Runtime providers, GPU")

    suites = bench_suites()
    s = command(sub, "bench", _cmd_bench,
                help=f"run a benchmark suite from benchmarks/ ({', '.join(suites) or 'a source checkout'})")
    s.add_argument("suite", choices=suites or None, help="the suite (benchmarks/SUITE.py)")
    s.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the suite (see its --help)")

    zoo = sub.add_parser("zoo", help="the model zoo").add_subparsers(dest="zoo_command", required=True,
                                                                      metavar="COMMAND")
    _zoo_export_options(command(zoo, "export", _cmd_zoo_export, "zoo export", help="export a zoo model to ONNX"))
    return p


def main(argv: list[str] | None = None) -> int:
    """`cnnviz-fast ARGS` (or `python -m cnnviz_fast ARGS`); returns the exit status."""
    from ._signals import interrupting

    args = build_parser().parse_args(argv)
    try:
        with interrupting():  # SIGTERM as well as Ctrl-C ends a command with a line, not silently
            return args.func(args)
    except (KeyboardInterrupt, Exception) as exc:
        code = exit_code(exc)
        if code is None:
            raise
        text = _disk_full(exc) or cli_message(exc)
        if text:  # an Interrupted from mine/project says what was kept; a bare Ctrl-C elsewhere says nothing
            print(f"cnnviz-fast {args.command_name}: {text}", file=sys.stderr)
        elif code != EXIT_INTERRUPTED:
            print(f"cnnviz-fast {args.command_name}: {type(exc).__name__}", file=sys.stderr)
        return code


def _disk_full(exc: BaseException) -> str | None:
    """A full disk said plainly (OSError's own text names only the file)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk is full (writing {exc.filename or 'a file'}): free some space and run the same "
                "command again")
    return None


if __name__ == "__main__":
    sys.exit(main())
