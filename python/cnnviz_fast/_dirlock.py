"""The output folder's lock (DIR/.lock): one cnnviz-fast process writes to a folder at a time."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FolderBusy(Exception):
    """DIR/.lock is held by another process; `who` is " (pid N)" when that process wrote its pid."""

    def __init__(self, who: str):
        super().__init__(who)
        self.who = who


def lock_folder(out: Path) -> int:
    """Take DIR/.lock without waiting and write our pid in it; returns the fd to pass to unlock_folder.

    Raises FolderBusy when another process holds it (callers turn that into their own message),
    OSError when the lock file cannot be opened or locked.
    """
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FolderBusy(f" (pid {holder})" if holder.isdigit() else "") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def unlock_folder(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
