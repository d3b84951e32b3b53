"""Checks of the graph tests' own helpers (tests/_support): the receptive-field Skeleton."""
from __future__ import annotations

import torch
from torch import nn

from _support.skeleton import Skeleton, SumPool


def test_skeleton_box_of_a_single_conv():
    conv = nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1), nn.ReLU())
    sk = Skeleton(conv, [("c", conv[1])])
    assert sk.boxes((9, 9), [("c", 0, 0), ("c", 4, 4)]) == [(0, 0, 2, 2), (7, 7, 9, 9)]


def test_sum_pool_keeps_ceil_mode_size():
    pool = SumPool(nn.MaxPool2d(3, 2, ceil_mode=True))
    assert pool(torch.ones(1, 1, 110, 110)).shape[-2:] == (55, 55)
