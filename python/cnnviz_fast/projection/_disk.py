"""Scratch arrays of the projection pass on disk, with their space reserved up front.

A memory map of a sparse file gets its blocks only when a page is first written; on a full disk
that write is a SIGBUS that kills the process (exit 135) with no word. `memmap` reserves the whole
file first (`posix_fallocate`), so a full disk is a ProjectionError before anything is drawn.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from ..errors import ProjectionError


def memmap(path: Path, dtype, shape) -> np.memmap:
    """`np.lib.format.open_memmap(path, "w+", dtype, shape)` with every block of the file allocated."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as exc:
        del arr
        Path(path).unlink(missing_ok=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        raise ProjectionError(f"the disk is full: {need / 2**20:,.1f} MiB of scratch space for {Path(path).name} "
                              f"cannot be had in {Path(path).parent}; layers already finished are kept: free "
                              "some space and run `cnnviz-fast project` again") from None
    return arr
