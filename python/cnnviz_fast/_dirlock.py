"""The output folder's lock: one cnnviz-fast process writes to a folder at a time.

The lock is an `fcntl.flock` on the folder itself (a descriptor of the directory), so it cannot be
defeated by deleting a file: removing or replacing DIR/.lock while a miner runs lets no second
process in. DIR/.lock is taken too (older releases and other tools lock only that file) and holds
"PID PURPOSE" ("mining", "projecting") so that a refused process can say what holds the folder.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

_FOLDER_FDS: dict[int, int] = {}   # DIR/.lock descriptor -> the folder's descriptor it travels with


class FolderBusy(Exception):
    """The folder is locked by another process. `who` is " (pid N)" when that process wrote its
    pid, `purpose` what it is doing ("mining", "projecting") or "" when it did not say."""

    def __init__(self, who: str, purpose: str = ""):
        super().__init__(who)
        self.who, self.purpose = who, purpose

    @property
    def doing(self) -> str:
        """"being mined", "being projected", or "in use" when the holder did not say."""
        return {"mining": "being mined", "projecting": "being projected"}.get(self.purpose, "in use")


def lock_folder(out: Path, purpose: str = "mining") -> int:
    """Lock folder `out` without waiting and write "PID PURPOSE" in DIR/.lock; returns the fd to
    pass to unlock_folder.

    Raises FolderBusy when another process holds it (callers turn that into their own message),
    OSError when the folder or the lock file cannot be opened or locked.
    """
    out = Path(out)
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _flock(dfd, out)
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except BaseException:
        os.close(dfd)
        raise
    try:
        _flock(fd, out)
    except BaseException:
        os.close(fd)
        os.close(dfd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {purpose}".encode(), 0)
    _FOLDER_FDS[fd] = dfd
    return fd


def unlock_folder(fd: int) -> None:
    """Release a lock `lock_folder` took (closing the descriptors releases the flocks)."""
    dfd = _FOLDER_FDS.pop(fd, None)
    try:
        try:
            os.ftruncate(fd, 0)  # no stale "PID PURPOSE" for whoever locks the file next
        except OSError:
            pass
        os.close(fd)
    finally:
        if dfd is not None:
            os.close(dfd)


def _flock(fd: int, out: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out) from None


def _busy(out: Path) -> FolderBusy:
    try:
        text = (out / ".lock").read_bytes()[:128].decode(errors="replace").split()
    except OSError:  # deleted by hand while the holder runs: the folder's own lock still holds
        text = []
    pid = text[0] if text and text[0].isdigit() else ""
    purpose = text[1] if len(text) > 1 else ""
    return FolderBusy(f" (pid {pid})" if pid else "", purpose)
