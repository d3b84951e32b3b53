"""The `cnnviz-fast` command line."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import onnxruntime as ort

    from . import __version__
    from ._runtime import build_info, gpu_count, ort_cuda_status

    info = build_info()
    n_gpu, gpu_why = gpu_count()
    ort_ok, ort_why = ort_cuda_status()
    lines = [
        f"cnnviz_fast {__version__} (native {info['version']}), Python {platform.python_version()} on {platform.machine()}",
        f"native build: CUDA kernels {'compiled for ' + ', '.join(info['cuda_archs']) + ' with nvcc ' + str(info['cuda_compiler_version']) if info['cuda'] else 'not compiled'}"
        f"; OpenMP {'yes (' + str(info['openmp_threads']) + ' threads)' if info['openmp'] else 'no'}; DLPack {info['dlpack_version']}",
        f"GPU: {gpu_why}",
        f"native CUDA kernels usable: {'yes' if info['cuda'] and n_gpu > 0 else 'no'}",
        f"ONNX Runtime {ort.__version__}: providers {', '.join(ort.get_available_providers())}",
        f"ONNX Runtime CUDA EP usable: {'yes' if ort_ok else 'no'} ({ort_why})",
    ]
    print("\n".join(lines))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy
    from pathlib import Path

    # Benchmarks live in the source tree (benchmarks/), next to the package when run from a checkout.
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / f"{args.suite}.py"
    if not script.exists():
        print(f"cnnviz-fast bench: {script} not found; benchmarks run from a source checkout", file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _cmd_zoo_export(args: argparse.Namespace) -> int:
    from .zoo import export_zoo

    try:
        export_zoo(args.name, args.output, weights=args.weights, random_weights=args.random_weights, seed=args.seed)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as exc:
        print(f"cnnviz-fast zoo export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnviz-fast", description="What each unit of a CNN has learned (Zeiler & Fergus deconvnet).")
    sub = p.add_subparsers(dest="command", required=True)

    from . import _cli_mine, _cli_report

    _cli_mine.register(sub)
    _cli_report.register(sub)

    s = sub.add_parser("info", help="native build, ONNX Runtime providers, GPU")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("bench", help="run a benchmark suite from benchmarks/ (kernels, mining, projection)")
    s.add_argument("suite", choices=["kernels", "mining", "projection"])
    s.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the suite (see its --help)")
    s.set_defaults(func=_cmd_bench)

    zoo = sub.add_parser("zoo", help="the model zoo").add_subparsers(dest="zoo_command", required=True)
    s = zoo.add_parser("export", help="export a zoo model to ONNX")
    s.add_argument("name", choices=["zfnet", "alexnet", "vgg16"])
    s.add_argument("-o", "--output", required=True)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--weights", help="local .pth/.pt or .safetensors file with the model's state dict")
    g.add_argument("--random-weights", action="store_true", help="random initialisation (for tests and benchmarks)")
    s.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    s.set_defaults(func=_cmd_zoo_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
