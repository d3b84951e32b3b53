"""Tar shards read in place: a header scan finds each image member's offset and size, and a member
is then one positioned read (os.pread), so workers read in parallel and nothing is extracted."""
from __future__ import annotations

import errno
import os
import re
import stat
import tarfile
import threading
from itertools import product
from pathlib import Path

_RANGE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand `{000000..000146}` (zero padding kept) and `{a,b,c}` groups, in order, left to right."""
    groups, parts, last = [], [], 0
    for m in _RANGE.finditer(pattern):
        parts.append(pattern[last:m.start()])
        groups.append(_alternatives(m.group(1), pattern))
        last = m.end()
    parts.append(pattern[last:])
    if not groups:
        return [pattern]
    out = []
    for combo in product(*groups):
        s = parts[0]
        for choice, tail in zip(combo, parts[1:]):
            s += choice + tail
        out.append(s)
    return out


def _alternatives(body: str, pattern: str) -> list[str]:
    m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        a, b = int(lo), int(hi)
        if b < a:
            raise ValueError(f"{pattern}: brace range {{{body}}} counts down")
        return [str(i).zfill(width) for i in range(a, b + 1)]
    if "," in body:
        return body.split(",")
    raise ValueError(f"{pattern}: cannot expand {{{body}}} (use {{000..146}} or {{a,b}})")


def scan_shard(path: Path, wanted) -> tuple[list[tuple[str, int, int]], str | None]:
    """([(member name, data offset, size)] of the members `wanted(name)` accepts, in tar order;
    a warning when the shard ends early or is not a tar file, else None)."""
    members: list[tuple[str, int, int]] = []
    try:
        size = path.stat().st_size
        with tarfile.open(path, "r:") as tf:
            while True:
                try:
                    info = tf.next()
                except tarfile.ReadError as exc:
                    after = f" after member {members[-1][0]!r}" if members else ""
                    return members, f"{path}: shard ends early{after} ({exc}); the rest of it is lost"
                if info is None:
                    if not _ends_cleanly(path, tf.offset, size):
                        after = f" after member {members[-1][0]!r}" if members else ""
                        return members, (f"{path}: shard ends without the end-of-archive marker{after} "
                                         "(truncated?); the rest of it, if any, is lost")
                    break
                if info.isfile() and wanted(info.name):
                    members.append((info.name, info.offset_data, info.size))
                if info.offset_data + info.size > size:
                    return members, f"{path}: shard truncated inside member {info.name!r}; the rest of it is lost"
    except tarfile.ReadError as exc:
        if not members:
            return members, f"{path}: not an uncompressed tar file ({exc})"
    except OSError as exc:
        return members, f"{path}: cannot read shard ({exc.strerror or exc})"
    return members, None


def _ends_cleanly(path: Path, offset: int, size: int) -> bool:
    """A tar ends with two zero blocks; tarfile stops silently at a header cut short instead."""
    if size - offset < 1024:
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1024) == bytes(1024)


class ShardReader:
    """Positioned reads of members from a set of shard files (thread-safe, one fd per shard)."""

    def __init__(self, shards: list[Path]):
        self._shards = shards
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def read(self, shard: int, offset: int, size: int) -> bytes:
        fd = self._fd(shard)
        chunks, done = [], 0
        while done < size:
            chunk = os.pread(fd, size - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        data = b"".join(chunks)
        if len(data) != size:
            raise EOFError(f"tar shard truncated mid-member: {size} bytes expected at offset {offset}, "
                           f"{len(data)} present")
        return data

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    # Checked regular when listed; O_NONBLOCK and fstat in case it was swapped for a FIFO since.
                    fd = os.open(self._shards[shard], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        os.close(fd)
                        raise OSError(errno.EINVAL, "not a regular file any more")
                    self._fds[shard] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
