"""`cnnviz-fast project DIR`, `report DIR`, `run MODEL DATA --out DIR` and `demo [--out DIR]`.

Exit status: 0 done, 2 a problem the user can fix (message, no traceback), 3 done but some top-k
entries are stale (the data or model changed after mining; they are listed), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the `project`, `report`, `run` and `demo` subcommands to an argparse subparsers object."""
    s = subparsers.add_parser(
        "project", help="pass 2: project every top-k entry back to pixels (DIR/projections/)",
        description="Re-forward the images of DIR/results.db that made some top-k, project each activation "
                    "back to pixels with the deconvnet, cut the matching patches, and write per-unit grids "
                    "to DIR/projections/<layer>/. Finished layers are skipped when run again.")
    s.add_argument("out", metavar="DIR", help="a folder mined with `cnnviz-fast mine`")
    _project_options(s)
    s.set_defaults(func=_cmd_project)

    s = subparsers.add_parser("report", help="pass 3: write the static HTML report DIR/report/",
                              description="Write DIR/report/index.html (opens from file://, no server).")
    s.add_argument("out", metavar="DIR")
    s.add_argument("--montage-units", type=int, default=16, metavar="N", help="units per layer montage (default 16)")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=_cmd_report)

    s = subparsers.add_parser("run", help="mine, project and report in one go",
                              description="`mine MODEL DATA --out DIR`, then `project DIR`, then `report DIR`.")
    from ._cli_mine import _add_arguments

    _add_arguments(s)
    s.add_argument("--mode", choices=["deconvnet", "guided", "gradient"], default="deconvnet",
                   help="projection rule (default deconvnet)")
    s.add_argument("--save-arrays", action="store_true", help="also write float16 recon.npy / patches.npy per layer")
    s.set_defaults(func=_cmd_run)

    s = subparsers.add_parser("demo", help="the whole pipeline on generated images with the shipped demo model",
                              description="Generate a deterministic image set, mine it with the shipped demo "
                                          "model, project, and write the report.")
    s.add_argument("--out", "-o", default="cnnviz-demo", metavar="DIR", help="output folder (default ./cnnviz-demo)")
    s.add_argument("--images", type=int, default=3000, help="images to generate (default 3000)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=_cmd_demo)


def _project_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--layers", default=None, help="comma-separated mined layers (default: all mined layers)")
    s.add_argument("--model", default=None, help="the mined model's file, when it is no longer where results.db says")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    s.add_argument("--mode", choices=["deconvnet", "guided", "gradient"], default="deconvnet",
                   help="projection rule (default deconvnet)")
    s.add_argument("--batch-size", type=int, default=256, help="seeds per reverse pass (default 256)")
    s.add_argument("--save-arrays", action="store_true", help="also write float16 recon.npy / patches.npy per layer")
    s.add_argument("--force", action="store_true", help="redo layers that are already done")
    p = s.add_mutually_exclusive_group()
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    p.add_argument("--quiet", "-q", action="store_true")


def _cmd_project(args: argparse.Namespace) -> int:
    from .projection import ProjectionError, project

    try:
        summary = project(args.out, layers=args.layers, model=args.model, device=args.device, mode=args.mode,
                          batch_size=args.batch_size, save_arrays=args.save_arrays, force=args.force,
                          progress="none" if args.quiet else args.progress)
    except ProjectionError as exc:
        print(f"cnnviz-fast project: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(summary, file=sys.stderr if summary.stale else sys.stdout)
    return 3 if summary.stale else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .errors import ResultsError
    from .reporting import report

    try:
        index = report(args.out, montage_units=args.montage_units)
    except ResultsError as exc:
        print(f"cnnviz-fast report: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"report: {index.resolve().as_uri()}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from . import _cli_mine

    status = _cli_mine.run(args)
    if status != 0:
        return status
    ns = argparse.Namespace(out=args.out, layers=None, model=None, device=args.device, mode=args.mode,
                            batch_size=256, save_arrays=args.save_arrays, force=False,
                            progress=args.progress, quiet=args.quiet)
    status = _cmd_project(ns)
    if status not in (0, 3):
        return status
    return _cmd_report(argparse.Namespace(out=args.out, montage_units=16, quiet=args.quiet)) or status


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, demo

    try:
        demo(args.out, images=args.images, device=args.device, quiet=args.quiet)
    except DemoError as exc:
        print(f"cnnviz-fast demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one of these subcommands on its own: `python -m cnnviz_fast._cli_report report DIR`."""
    p = argparse.ArgumentParser(prog="cnnviz-fast")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
