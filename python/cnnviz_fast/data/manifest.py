"""The manifest: a dataset as an ordered list of images whose positions are the image ids.

Three kinds of DATA, ids as DESIGN.md fixes them:
- a folder tree (ImageNet's `train/<wnid>/*.JPEG` included): every file with an image extension,
  ids in sorted order of the relative paths ('/'-separated, compared as strings); hidden files and
  folders (names starting with '.', e.g. macOS `._x.jpg`) are left out, symlinked folders followed;
- a text file listing image paths, one a line (UTF-8, a BOM ignored; relative paths are relative
  to the list file's folder): each line is a path exactly as written, spaces included, less its
  line ending (\\n or \\r\\n); blank lines and lines starting with '#' are skipped (list a name that
  starts with '#' as `./#name`). Ids in file order. A file listed twice (the same path, or another
  path to the same file: same device and inode) is kept once, at its first line, and the repeats are
  counted in a warning: a repeat would fill several top-k slots of a unit with one image;
- tar shards, WebDataset style (`shard-{000000..000146}.tar`, `{a,b}` lists too, or one .tar):
  ids in shard order then member order, image members only (labels and metadata members are left
  out); members are read in place, never extracted.

The manifest holds only names and offsets (tens of bytes an image); reading an image is
`manifest.read(image_id)`, which raises `DecodeError` with a readable reason when it cannot. Only
regular files are read, each at most `max_bytes` (see `_files`). Names that are not valid UTF-8
are kept as they are for reading and shown by `name()`/`path()` with `\\xNN` escapes. `warnings`
notes what was left out: unreadable folders, shards cut short, repeated list entries.

Two fingerprints: `fingerprint()` (the ordered names: equal fingerprints give equal image ids)
and `content_fingerprint()` (adds each file's size and modification time, st_mtime_ns, so files
rewritten under the same names are noticed at resume; one stat per file, 7-10 us each on a
2-core test machine, 8-13 s at 1.28 M files on a warm cache).
"""
from __future__ import annotations

import array
import hashlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ._files import (DEFAULT_MAX_BYTES, NEVER_FOUND, VANISHED, os_reason, read_file, readable_name, require_regular,
                     stat_pair)
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
    `open_manifest` accepts to rebuild it), `warnings` (readable notes: truncated shards, ...),
    `max_bytes` (the largest file read).
    """

    kind: str

    def __init__(self, spec: dict, names: list[str], warnings: list[str] | None = None):
        self.spec = spec
        self._names = names
        self.warnings = [readable_name(w) for w in warnings or []]
        self.max_bytes = int(spec.get("max_bytes", DEFAULT_MAX_BYTES))
        self._content: str | None = None

    def __len__(self) -> int:
        return len(self._names)

    def name(self, image_id: int) -> str:
        """The image's name inside the dataset (relative path, listed path, or shard/member)."""
        return readable_name(self._names[image_id])

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

    def content_fingerprint(self) -> str:
        """sha256 of `fingerprint()` and every file's (size, st_mtime_ns), in id order (a file that
        cannot be stat'ed counts as (-1, -1)): changes when a file is rewritten under the same
        name. One stat per file, done once per manifest (cached)."""
        if self._content is None:
            h = hashlib.sha256(self.fingerprint().encode())
            h.update(np.ascontiguousarray(self._stats(), dtype="<i8").tobytes())
            self._content = h.hexdigest()
        return self._content

    def _stats(self) -> np.ndarray:
        """int64 [n, 2] (size, st_mtime_ns) per file; a manifest that cannot stat has none."""
        return np.zeros((0, 2), np.int64)

    def close(self) -> None:
        """Release open files (tar shards)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.spec})"


class _FileManifest(Manifest):
    def __init__(self, spec: dict, base: Path, names: list[str], warnings=None, stats: np.ndarray | None = None):
        super().__init__(spec, names, warnings)
        self._base = str(base)
        self._stats_at_listing = stats

    def _path(self, image_id: int) -> str:
        return os.path.join(self._base, self._names[image_id])

    def path(self, image_id: int) -> str:
        return readable_name(self._path(image_id))

    def read(self, image_id: int) -> bytes:
        listed = self._stats_at_listing
        missing = NEVER_FOUND if listed is not None and listed[image_id, 0] < 0 else VANISHED
        return read_file(self._path(image_id), self.max_bytes, missing)

    def _stats(self) -> np.ndarray:
        if self._stats_at_listing is not None:
            return self._stats_at_listing
        out = np.empty((len(self), 2), np.int64)  # filled in place: no 1.28 M Python tuples at once
        for i in range(len(self)):
            out[i] = stat_pair(self._path(i))
        return out


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
        return readable_name(f"{self._shards[self._shard_of[image_id]].name}/{self._names[image_id]}")

    def path(self, image_id: int) -> str:
        return readable_name(f"{self._shards[self._shard_of[image_id]]}/{self._names[image_id]}")

    def read(self, image_id: int) -> bytes:
        size = int(self._sizes[image_id])
        if size > self.max_bytes:
            raise DecodeError(f"tar member too large: {size:,} bytes exceeds the read limit of "
                              f"{self.max_bytes:,} bytes (open_manifest(..., max_bytes=N) raises it)")
        try:
            return self._reader.read(int(self._shard_of[image_id]), int(self._offsets[image_id]), size)
        except EOFError as exc:
            raise DecodeError(str(exc)) from None
        except OSError as exc:
            raise DecodeError(os_reason(exc, "tar shard")) from None

    def _stats(self) -> np.ndarray:
        # The names fingerprint already holds every member's size; a shard's size and mtime cover the rest.
        return np.array([stat_pair(str(p)) for p in self._shards], np.int64).reshape(-1, 2)

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"tar")
        for i, n in enumerate(self._names):
            h.update(f"\0{self._shards[self._shard_of[i]].name}/{n}:{self._sizes[i]}".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def close(self) -> None:
        self._reader.close()


def open_manifest(data: str | os.PathLike | Sequence[str | os.PathLike] | dict, *,
                  max_bytes: int | None = None) -> Manifest:
    """A Manifest for DATA: a folder, a list file, a .tar path or brace pattern, a sequence of
    .tar paths, or a `Manifest.spec` dict. ValueError with the reason when DATA is none of these.

    max_bytes: the largest image file (or tar member) read; larger ones fail with a reason
    (default `DEFAULT_MAX_BYTES`, 256 MiB). A non-default limit is part of `spec`."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or int(max_bytes) < 1):
        raise ValueError(f"max_bytes must be a positive number of bytes, not {max_bytes!r}")
    manifest = _open(data)
    if max_bytes is None:
        max_bytes = data.get("max_bytes", DEFAULT_MAX_BYTES) if isinstance(data, dict) else DEFAULT_MAX_BYTES
    limit = int(max_bytes)
    spec = {k: v for k, v in manifest.spec.items() if k != "max_bytes"}
    manifest.spec = spec if limit == DEFAULT_MAX_BYTES else {**spec, "max_bytes": limit}
    manifest.max_bytes = limit
    return manifest


def _open(data) -> Manifest:
    if isinstance(data, dict):
        return _from_spec(data)
    if isinstance(data, (list, tuple)):
        return _tar([Path(p) for p in data])
    text = os.fspath(data)
    shown = readable_name(text)
    if "{" in text:
        return _tar([Path(p) for p in expand_braces(text)])
    path = Path(text)
    if path.is_dir():
        return _folder(path)
    if not path.exists():
        raise ValueError(f"{shown}: no such file or folder")
    if path.suffix.lower() == ".tar":
        return _tar([path])
    if path.suffix.lower() in (".tgz", ".gz", ".bz2", ".xz", ".zst") and ".tar" in path.name.lower():
        raise ValueError(f"{shown}: compressed tar shards cannot be read in place; decompress them "
                         "(e.g. gunzip) to plain .tar first")
    if is_image_name(path.name):
        raise ValueError(f"{shown} is a single image; DATA is a folder, a list file or tar shards")
    return _list(path)


def _from_spec(spec: dict) -> Manifest:
    kind = spec.get("kind")
    if kind == "folder":
        return _folder(Path(spec["root"]))
    if kind == "list":
        return _list(Path(spec["list"]))
    if kind == "tar":
        return _tar([Path(p) for p in spec["shards"]])
    raise ValueError(f"unknown dataset spec {readable_name(repr(spec))}")


def _folder(root: Path) -> FolderManifest:
    root = root.resolve()
    names: list[str] = []
    warnings: list[str] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        # os.walk skips a folder it cannot list; say so, since its images are then not in the manifest.
        rel = os.path.relpath(exc.filename, root) if exc.filename else "?"
        warnings.append(f"cannot read folder {os.path.join(str(root), rel) if rel != '.' else root} "
                        f"({exc.strerror or exc}); its images are left out")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            unreadable(exc)
            dirnames[:] = []
            continue
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
        why = f"; {readable_name(warnings[0])}" if warnings else ""
        raise ValueError(f"{readable_name(str(root))}: no image files found (extensions "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}){why}")
    return FolderManifest({"kind": "folder", "root": str(root)}, root, names, warnings)


def _list(path: Path) -> ListManifest:
    path = path.resolve()
    require_regular(str(path), "list file")  # a FIFO or /dev/zero given as DATA must not be read
    raw = path.read_bytes()
    if b"\0" in raw:
        raise ValueError(f"{readable_name(str(path))}: not a text file listing image paths (and not a folder or .tar)")
    # Names that are not UTF-8 stay raw bytes (surrogate escapes), as file names from os.walk do.
    text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    base = str(path.parent)
    names: list[str] = []
    stats = array.array("q")  # (size, mtime_ns) pairs, flat: 16 bytes a line
    first: dict = {}
    repeats: list[tuple[str, int, int]] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.startswith("#"):
            continue
        full = os.path.join(base, line)
        try:
            st = os.stat(full)
            key, pair = (st.st_dev, st.st_ino), (st.st_size, st.st_mtime_ns)
        except OSError:
            key, pair = os.path.normpath(full), (-1, -1)
        if key in first:
            repeats.append((line, first[key], lineno))
            continue
        first[key] = lineno
        names.append(line)
        stats.extend(pair)
    if not names:
        raise ValueError(f"{readable_name(str(path))}: the list names no images")
    warnings = []
    if repeats:
        line, a, b = repeats[0]
        warnings.append(f"{path}: {len(repeats):,} repeated entr{'y' if len(repeats) == 1 else 'ies'} dropped "
                        f"(a file listed more than once counts once, at its first line; e.g. {line!r} "
                        f"at lines {a} and {b})")
    return ListManifest({"kind": "list", "list": str(path)}, path.parent, names, warnings,
                        np.frombuffer(stats, np.int64).reshape(-1, 2))


def _tar(shards: list[Path]) -> TarManifest:
    shards = [p.resolve() for p in shards]
    missing = [readable_name(str(p)) for p in shards if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"tar shard{'s' if len(missing) > 1 else ''} not found: {', '.join(missing[:3])}{more}")
    for p in shards:
        require_regular(str(p), "tar shard")
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
        raise ValueError(readable_name(f"no image members in {len(shards)} tar shard(s)" +
                                       (f": {warnings[0]}" if warnings else "")))
    spec = {"kind": "tar", "shards": [str(p) for p in shards]}
    return TarManifest(spec, shards, names, np.asarray(shard_of, np.int32), np.asarray(offsets, np.int64),
                       np.asarray(sizes, np.int64), warnings)


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
