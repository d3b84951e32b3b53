"""The standard benchmark suite in one go: kernels, mining, projection (others opt-in), one JSON file.

    cnnviz-fast bench all [--quick | --smoke] [--device cpu|cuda] [--with heads,cluster] [--only SUITES]
                          [--json FILE]
    python benchmarks/all.py [same options]

Each suite runs in its own process (as `cnnviz-fast bench SUITE ... --json TMP`, its output shown as
it goes), so one suite's failure or thread settings do not touch the next. Sizes:

- default: each suite's own defaults, the figures README quotes (tens of minutes on 2 cores);
- --quick: reduced sizes for a first look on a small machine, sized for a few minutes on 2 cores (kernels at
  batch 8, mining 64 images of ZFNet only, projection 4 units a layer of 16 images);
- --smoke: the smallest sizes that exercise every path (about a minute for the three here); the
  figures mean nothing.

--json FILE writes one document in the format of `benchmarks/_common.py` (README, "Benchmark
results") with an entry per suite; a suite that could not run has "error" and no results.
Exit status 0 when every suite ran (a missed target is recorded as "pass": false, not an error),
1 when one could not.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, as a script or via `cnnviz-fast bench`
import _common  # noqa: E402

STANDARD = ("kernels", "mining", "projection")
OPT_IN = ("heads", "cluster")
NO_JSON = ("heads",)  # prints its table only
SIZES = {
    "default": {"kernels": [], "mining": [], "projection": [], "heads": [], "cluster": []},
    "quick": {"kernels": ["--batch", "8", "--repeats", "3"],
              "mining": ["--images", "64", "--image-size", "160", "--repeats", "1", "--models", "zfnet"],
              "projection": ["--images", "16", "--units", "4"],
              "heads": ["--batch", "8", "--repeats", "2"],
              "cluster": ["--images", "256"]},
    "smoke": {"kernels": ["--batch", "1", "--repeats", "1", "--warmup", "0", "--ops", "switch_pool,topk_merge"],
              "mining": ["--images", "8", "--image-size", "64", "--batch-size", "4", "--repeats", "1",
                         "--models", "zfnet"],
              "projection": ["--images", "2", "--units", "1", "--top", "1", "--batch", "4", "--warmup", "0"],
              "heads": ["--batch", "1", "--repeats", "1"],
              "cluster": ["--images", "64"]},
}


def suite_args(suite: str, size: str, device: str) -> list[str]:
    """The options a suite gets for a size and device."""
    args = list(SIZES[size].get(suite, []))
    if device == "cuda":
        args += {"kernels": ["--cuda"], "mining": ["--device", "cuda"],
                 "projection": ["--device", "cuda"]}.get(suite, [])
    return args


def parse_args(argv):
    p = argparse.ArgumentParser(prog="cnnviz-fast bench all", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced sizes: a few minutes on 2 cores")
    size.add_argument("--smoke", action="store_true", help="tiny sizes that only check every suite runs")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the suites' CUDA variants too")
    p.add_argument("--with", dest="extra", default="", metavar="SUITES",
                   help=f"comma-separated opt-in suites to add ({', '.join(OPT_IN)})")
    p.add_argument("--only", default="", metavar="SUITES",
                   help="comma-separated suites to run instead of the standard ones (to redo one)")
    p.add_argument("--json", metavar="FILE", help="write every suite's results to FILE (benchmarks/_common.py)")
    args = p.parse_args(argv)
    args.extra = [s.strip() for s in args.extra.split(",") if s.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.extra if s not in OPT_IN] + [s for s in args.only if s not in STANDARD + OPT_IN]
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}; standard: {', '.join(STANDARD)}; opt-in: {', '.join(OPT_IN)}")
    args.size = "quick" if args.quick else "smoke" if args.smoke else "default"
    return args


def run_suite(suite: str, options: list[str], tmp: Path) -> tuple[dict | None, str, str | None, int]:
    """Run one suite with --json into `tmp`: (its entry or None, its device, its GPU, exit status)."""
    out = tmp / f"{suite}.json"
    cmd = [sys.executable, str(HERE / f"{suite}.py"), *options, *([] if suite in NO_JSON else ["--json", str(out)])]
    command = " ".join(["cnnviz-fast", "bench", suite, *options])
    print(f"\n=== {command}", flush=True)
    rc = subprocess.run(cmd).returncode
    if suite in NO_JSON and rc == 0:
        return _common.entry(suite, {}, [], {"note": "this suite prints its table only"}, argv=options), "cpu", None, rc
    if not out.is_file():
        return None, "cpu", None, rc
    doc = json.loads(out.read_text())
    if doc.get("format") != _common.FORMAT:  # a suite with a JSON of its own: kept whole under raw
        return _common.entry(suite, {}, [], doc, argv=options), "cpu", None, rc
    entry = doc["benchmarks"][0]
    entry["command"] = command
    return entry, doc["machine"]["device"], doc["machine"]["gpu"], rc


def main(argv=None) -> int:
    args = parse_args(argv)
    suites = args.only or [*STANDARD, *args.extra]
    entries, device, gpu, failed = [], "cpu", None, []
    with tempfile.TemporaryDirectory(prefix="cnnviz-bench-all-") as tmp:
        for suite in suites:
            entry, dev, g, rc = run_suite(suite, suite_args(suite, args.size, args.device), Path(tmp))
            if entry is None:  # crashed before writing its results (exit 1 alone is a missed target)
                failed.append(suite)
                entry = {"suite": suite, "command": f"cnnviz-fast bench {suite}", "config": {}, "pass": False,
                         "results": [], "raw": None, "error": f"exit status {rc}, no results written"}
            entries.append(entry)
            if dev == "cuda":
                device, gpu = dev, g or gpu
    print("\n=== summary")
    for e in entries:
        verdict = e.get("error") or {True: "targets met", False: "targets missed", None: "no targets"}[e["pass"]]
        print(f"  {e['suite']:<11} {len(e['results']):>3} results   {verdict}")
    if args.json:
        _common.write(args.json, entries, device, gpu)
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
