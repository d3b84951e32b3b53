"""What the report must say plainly before anything else, and names made safe to show.

- `banners(run)`: one line each for an unfinished run (how many images are mined), a failed one
  (stopped by its error budget, or more than `MAX_ERROR_RATE` of its images unusable) and stale
  or foreign projections (made from another top-k or another model: their pictures are left out,
  `stale_reason` says why, and the line says to re-run `cnnviz-fast project`).
- `neutral(text)`: bidirectional-control characters (U+202E RIGHT-TO-LEFT OVERRIDE and friends)
  written as visible escapes ("\\u202e"), so a file name cannot reorder what the report shows.
- `relative(path, spec)`: a path relative to the dataset's root (`report --relative-paths`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import MAX_ERROR_RATE
from ._html import esc

# Unicode's explicit directional formatting characters (UAX #9) and the implicit marks.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def neutral(text):
    """`text` with every bidirectional-control character as a visible \\uXXXX escape (non-strings
    as they are)."""
    if not isinstance(text, str):
        return text
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def neutral_deep(value):
    """`neutral` over the strings of a JSON-like value (the run table)."""
    if isinstance(value, str):
        return neutral(value)
    if isinstance(value, list):
        return [neutral_deep(v) for v in value]
    if isinstance(value, dict):
        return {k: neutral_deep(v) for k, v in value.items()}
    return value


def dataset_root(spec) -> Path | None:
    """The folder a dataset's paths are relative to: a folder tree's root, a list file's folder,
    the shards' common folder."""
    if not isinstance(spec, dict):
        return None
    kind = spec.get("kind")
    if kind == "folder" and spec.get("root"):
        return Path(spec["root"])
    if kind == "list" and spec.get("list"):
        return Path(spec["list"]).parent
    if kind == "tar" and spec.get("shards"):
        return Path(os.path.commonpath([str(Path(p).parent) for p in spec["shards"]]))
    return None


def relative(path: str, root: Path | None) -> str:
    """`path` relative to `root` when it lies inside it; else its last component alone (a shared
    report shows no folder outside the dataset)."""
    if root is None:
        return os.path.basename(path)
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return os.path.basename(path) or path


def stale_reason(marker: dict, topk_digest: str, model_sha256) -> str | None:
    """Why a layer's projections do not belong to the current top-k (None when they do)."""
    if marker.get("topk_digest") != topk_digest:
        return "made from another run's top-k (the folder was mined again)"
    if model_sha256 and marker.get("model_sha256") != model_sha256:
        return "made with another model"
    return None


def banners(run) -> list[str]:
    """The plain-text warnings at the top of the index page, most serious first."""
    out = []
    prog, total = run.progress, run.counts["images"]
    limit = run.run.get("limit")
    if limit:
        total = min(total, int(limit))
    done = int(prog.get("images_done", total) or 0) if prog else total
    status = prog.get("status", "finished") if prog else "finished"
    errors = run.counts["errors"]
    if status != "finished":
        out.append(f"UNFINISHED: mining stopped at {done:,} of {total:,} images (status {status}); every "
                   "number and picture here covers only those. Run the same `cnnviz-fast mine` command again "
                   "to finish it.")
    if status == "stopped" or (done and errors > MAX_ERROR_RATE * done):
        out.append(f"FAILED: {errors:,} of the {done:,} images mined could not be used; see the errors below "
                   "before trusting anything here.")
    stale = [v.name for v in run.layers if getattr(v, "stale_projection", None)]
    if stale:
        why = "; ".join(f"{v.name}: {v.stale_projection}" for v in run.layers if getattr(v, "stale_projection", None))
        out.append(f"STALE PROJECTIONS ({why}): their pictures are left out. Re-run `cnnviz-fast project "
                   f"{neutral(str(run.out))}` to redraw them.")
    return out


def banners_html(run) -> str:
    """The banners as HTML for the top of a page ("" when there is nothing to say)."""
    lines = banners(run)
    return "".join(f'<p class="note banner" role="alert"><strong>{esc(line)}</strong></p>' for line in lines)


def cleans_up(report):
    """Decorates `report(out_dir, ...)`: when writing fails (a full disk, Ctrl-C), its temporary
    folder goes, an old report moved aside comes back, and an OSError becomes a ReportError that
    says what to do."""
    import functools
    import shutil

    from ..errors import ReportError

    @functools.wraps(report)
    def run(out_dir, *args, **kwargs):
        out = Path(out_dir)
        try:
            return report(out_dir, *args, **kwargs)
        except BaseException as exc:
            tmp, old = out / f".report.{os.getpid()}.tmp", out / f".report.{os.getpid()}.old"
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not (out / "report").exists():
                os.replace(old, out / "report")
            if isinstance(exc, OSError):
                full = exc.errno in (28, 122)  # ENOSPC, EDQUOT
                why = "the disk is full" if full else (exc.strerror or str(exc))
                raise ReportError(f"cannot write the report in {out / 'report'}: {why} ({exc.filename or out}); "
                                  f"nothing was left half-written: {'free some space' if full else 'fix that'} and "
                                  f"run `cnnviz-fast report {out}` again") from None
            raise
    return run
