"""The manifest: a dataset as an ordered list of images whose positions are the image ids.

Three kinds of DATA, ids as DESIGN.md fixes them:
- a folder tree (ImageNet's `train/<wnid>/*.JPEG` included): every file with an image extension,
  ids in sorted order of the relative paths ('/'-separated, compared as strings); hidden files and
  folders (names starting with '.', e.g. macOS `._x.jpg`) are left out, symlinked folders followed;
- a text file listing image paths, one a line (blank lines and '#' comments skipped; relative
  paths are relative to the list file's folder): ids in file order, every listed path counts;
- tar shards, WebDataset style (`shard-{000000..000146}.tar`, `{a,b}` lists too, or one .tar):
  ids in shard order then member order, image members only (labels and metadata members are left
  out); members are read in place, never extracted.

The manifest holds only names and offsets (tens of bytes an image); reading an image is
`manifest.read(image_id)`, which raises `DecodeError` with a readable reason when it cannot.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ._tar import ShardReader, expand_braces, scan_shard
from .decode import DecodeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp",
                              ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"})


def is_image_name(name: str) -> bool:
    """Whether a file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class Manifest:
    """An ordered image collection; see the module docstring. Use `open_manifest` to make one.

    Attributes: `kind` ("folder", "list" or "tar"), `spec` (JSON-able description that
    `open_manifest` accepts to rebuild it), `warnings` (readable notes: truncated shards, ...).
    """

    kind: str

    def __init__(self, spec: dict, names: list[str], warnings: list[str] | None = None):
        self.spec = spec
        self._names = names
        self.warnings = list(warnings or [])

    def __len__(self) -> int:
        return len(self._names)

    def name(self, image_id: int) -> str:
        """The image's name inside the dataset (relative path, listed path, or shard/member)."""
        return self._names[image_id]

    def path(self, image_id: int) -> str:
        """Where the image is, for people and for results.db's images table."""
        raise NotImplementedError

    def read(self, image_id: int) -> bytes:
        """The image file's bytes; DecodeError with the reason when they cannot be read."""
        raise NotImplementedError

    def paths(self, start: int = 0) -> Iterator[tuple[int, str]]:
        """(image_id, path) for every image from `start` on."""
        for i in range(start, len(self)):
            yield i, self.path(i)

    def fingerprint(self) -> str:
        """sha256 of the kind and the ordered image names: equal manifests give equal ids."""
        h = hashlib.sha256(self.kind.encode())
        for n in self._names:
            h.update(b"\0" + n.encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def close(self) -> None:
        """Release open files (tar shards)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.spec})"


class _FileManifest(Manifest):
    def __init__(self, spec: dict, base: Path, names: list[str], warnings=None):
        super().__init__(spec, names, warnings)
        self._base = base

    def path(self, image_id: int) -> str:
        return os.path.join(self._base, self._names[image_id])

    def read(self, image_id: int) -> bytes:
        return _read_file(self.path(image_id))


class FolderManifest(_FileManifest):
    kind = "folder"


class ListManifest(_FileManifest):
    kind = "list"


class TarManifest(Manifest):
    kind = "tar"

    def __init__(self, spec: dict, shards: list[Path], names: list[str], shard_of: np.ndarray,
                 offsets: np.ndarray, sizes: np.ndarray, warnings=None):
        super().__init__(spec, names, warnings)
        self._shards = shards
        self._shard_of, self._offsets, self._sizes = shard_of, offsets, sizes
        self._reader = ShardReader(shards)

    def name(self, image_id: int) -> str:
        return f"{self._shards[self._shard_of[image_id]].name}/{self._names[image_id]}"

    def path(self, image_id: int) -> str:
        return f"{self._shards[self._shard_of[image_id]]}/{self._names[image_id]}"

    def read(self, image_id: int) -> bytes:
        try:
            return self._reader.read(int(self._shard_of[image_id]), int(self._offsets[image_id]),
                                     int(self._sizes[image_id]))
        except EOFError as exc:
            raise DecodeError(str(exc)) from None
        except OSError as exc:
            raise DecodeError(_os_reason(exc, "tar shard")) from None

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"tar")
        for i, n in enumerate(self._names):
            h.update(f"\0{self._shards[self._shard_of[i]].name}/{n}:{self._sizes[i]}".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def close(self) -> None:
        self._reader.close()


def open_manifest(data: str | os.PathLike | Sequence[str | os.PathLike] | dict) -> Manifest:
    """A Manifest for DATA: a folder, a list file, a .tar path or brace pattern, a sequence of
    .tar paths, or a `Manifest.spec` dict. ValueError with the reason when DATA is none of these."""
    if isinstance(data, dict):
        return _from_spec(data)
    if isinstance(data, (list, tuple)):
        return _tar([Path(p) for p in data])
    text = os.fspath(data)
    if "{" in text:
        return _tar([Path(p) for p in expand_braces(text)])
    path = Path(text)
    if path.is_dir():
        return _folder(path)
    if not path.exists():
        raise ValueError(f"{text}: no such file or folder")
    if path.suffix.lower() == ".tar":
        return _tar([path])
    if path.suffix.lower() in (".tgz", ".gz", ".bz2", ".xz", ".zst") and ".tar" in path.name.lower():
        raise ValueError(f"{text}: compressed tar shards cannot be read in place; decompress them "
                         "(e.g. gunzip) to plain .tar first")
    if is_image_name(path.name):
        raise ValueError(f"{text} is a single image; DATA is a folder, a list file or tar shards")
    return _list(path)


def _from_spec(spec: dict) -> Manifest:
    kind = spec.get("kind")
    if kind == "folder":
        return _folder(Path(spec["root"]))
    if kind == "list":
        return _list(Path(spec["list"]))
    if kind == "tar":
        return _tar([Path(p) for p in spec["shards"]])
    raise ValueError(f"unknown dataset spec {spec!r}")


def _folder(root: Path) -> FolderManifest:
    root = root.resolve()
    names: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop: walk each real folder once
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        names.extend(prefix + f for f in filenames if not f.startswith(".") and is_image_name(f))
    names.sort()
    if not names:
        raise ValueError(f"{root}: no image files found (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return FolderManifest({"kind": "folder", "root": str(root)}, root, names)


def _list(path: Path) -> ListManifest:
    path = path.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file listing image paths (and not a folder or .tar)") from None
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    if not names:
        raise ValueError(f"{path}: the list names no images")
    return ListManifest({"kind": "list", "list": str(path)}, path.parent, names)


def _tar(shards: list[Path]) -> TarManifest:
    shards = [p.resolve() for p in shards]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"tar shard{'s' if len(missing) > 1 else ''} not found: {', '.join(missing[:3])}{more}")
    names: list[str] = []
    shard_of, offsets, sizes, warnings = [], [], [], []
    for i, shard in enumerate(shards):
        members, warning = scan_shard(shard, is_image_name)
        if warning:
            warnings.append(warning)
        for name, offset, size in members:
            names.append(name)
            shard_of.append(i)
            offsets.append(offset)
            sizes.append(size)
    if not names:
        raise ValueError(f"no image members in {len(shards)} tar shard(s)" + (f": {warnings[0]}" if warnings else ""))
    spec = {"kind": "tar", "shards": [str(p) for p in shards]}
    return TarManifest(spec, shards, names, np.asarray(shard_of, np.int32), np.asarray(offsets, np.int64),
                       np.asarray(sizes, np.int64), warnings)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DecodeError("file not found (vanished since the dataset was listed?)") from None
    except OSError as exc:
        raise DecodeError(_os_reason(exc, "file")) from None


def _os_reason(exc: OSError, what: str) -> str:
    if isinstance(exc, PermissionError):
        return f"cannot read the {what}: permission denied"
    if isinstance(exc, IsADirectoryError):
        return f"cannot read the {what}: it is a folder"
    return f"cannot read the {what}: {exc.strerror or exc}"


def sample_ids(images: int, limit: int | None) -> np.ndarray | None:
    """The ids of a quick look at `limit` of a manifest's `images` images (`mine(limit=N)`):
    evenly spaced, floor(j * images / limit) for j = 0..limit-1, ascending. The same manifest and
    limit give the same sample every time, with no random generator whose stream could change, and
    a folder tree sorted by class (ImageNet's train/<wnid>/) is sampled across every class. None
    (the whole manifest) when `limit` is None or not below `images`."""
    if limit is None or limit >= images:
        return None
    if limit < 1:
        raise ValueError(f"a sample needs at least one image, got {limit}")
    return (np.arange(limit, dtype=np.int64) * images) // limit
