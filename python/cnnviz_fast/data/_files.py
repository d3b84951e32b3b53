"""Reading dataset files safely, and names that survive any bytes.

- Only regular files are read: the path is stat'ed first (following symlinks), so a FIFO, device
  or socket, even behind a symlink (`x.jpg -> /dev/zero`), is refused without being opened; the
  open itself uses O_NONBLOCK (a FIFO swapped in after the stat cannot block it) and the opened
  descriptor is checked again with fstat.
- Every read is bounded: a file larger than the manifest's `max_bytes` (default
  `DEFAULT_MAX_BYTES`, 256 MiB; `open_manifest(data, max_bytes=N)`) is refused before its bytes
  are read, and a file that grows while it is read is cut off at the limit and refused.
- Names: on POSIX a file name is bytes. Python gives names that are not UTF-8 as str with
  surrogate escapes (PEP 383); those are kept as they are for opening the file, and
  `readable_name` turns them into a printable, UTF-8-safe form for results.db and reports (each
  undecodable byte becomes `\\xNN`).
"""
from __future__ import annotations

import os
import stat

from .decode import DecodeError

DEFAULT_MAX_BYTES = 256 << 20  # larger than any real photograph; a 16k x 16k PNG is ~200 MB worst case

VANISHED = "file not found (vanished since the dataset was listed)"
NEVER_FOUND = "file not found (it did not exist when the dataset was listed; check the path in the list file)"

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def readable_name(name: str) -> str:
    """`name` with every undecodable byte (a surrogate escape) written as `\\xNN`: valid UTF-8."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def not_regular(mode: int) -> str | None:
    """Why a file of this st_mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, what in _KINDS:
        if test(mode):
            return f"not a regular file: {what}"
    return "not a regular file"


def require_regular(path: str, what: str) -> os.stat_result:
    """stat(path) for a regular file, else ValueError naming `what` and the reason."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{readable_name(path)}: no such file or folder") from None
    except OSError as exc:
        raise ValueError(f"{readable_name(path)}: cannot read the {what} ({exc.strerror or exc})") from None
    reason = not_regular(st.st_mode)
    if reason:
        raise ValueError(f"{readable_name(path)}: the {what} is not a regular file ({reason})")
    return st


def too_large(size: int, max_bytes: int) -> str:
    return (f"file too large: {size:,} bytes exceeds the read limit of {max_bytes:,} bytes "
            "(open_manifest(..., max_bytes=N) raises it)")


def read_file(path: str, max_bytes: int, missing: str = VANISHED) -> bytes:
    """The bytes of the regular file `path`, at most `max_bytes`; DecodeError with the reason."""
    try:
        st = os.stat(path)
        reason = not_regular(st.st_mode) or (too_large(st.st_size, max_bytes) if st.st_size > max_bytes else None)
        if reason:
            raise DecodeError(reason)
        # O_NONBLOCK: should a FIFO have replaced the file since the stat, open() must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DecodeError(_broken_link(path) or missing) from None
    except OSError as exc:
        raise DecodeError(os_reason(exc, "file")) from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        reason = not_regular(st.st_mode) or (too_large(st.st_size, max_bytes) if st.st_size > max_bytes else None)
        if reason:
            raise DecodeError(reason)
        try:
            return _read_bounded(f, st.st_size, max_bytes)
        except OSError as exc:
            raise DecodeError(os_reason(exc, "file")) from None


def _broken_link(path: str) -> str | None:
    try:
        target = os.readlink(path)
    except OSError:  # not a symlink (or gone): the file itself is missing
        return None
    return f"file not found: a broken symbolic link (its target {readable_name(target)!r} does not exist)"


def _read_bounded(f, size: int, max_bytes: int) -> bytes:
    # One read of the size fstat gave (plus one byte, to notice growth), never a max_bytes buffer.
    data = f.read(size + 1)
    if len(data) <= size:
        return data
    parts, total = [data], len(data)
    while total <= max_bytes:
        chunk = f.read(min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
    raise DecodeError(f"file grew past the read limit of {max_bytes:,} bytes while it was read")


def stat_pair(path: str) -> tuple[int, int]:
    """(st_size, st_mtime_ns) following symlinks; (-1, -1) for a file that cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def os_reason(exc: OSError, what: str) -> str:
    if isinstance(exc, PermissionError):
        return f"cannot read the {what}: permission denied"
    if isinstance(exc, IsADirectoryError):
        return f"cannot read the {what}: it is a folder"
    return f"cannot read the {what}: {exc.strerror or exc}"
