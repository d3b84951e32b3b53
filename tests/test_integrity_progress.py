"""The progress rate after a resume (issue 11, item 15): it counts only the images this call went
through, never the ones an earlier call had done (a resume at 4,000 that mines 20 images in 2 s
shows 10 img/s, not 2,010), in both display modes. The clock is mocked: no timing in the test."""
from __future__ import annotations

import io
from unittest import mock

import pytest

import cnnviz_fast._progress as progress


@pytest.mark.parametrize("mode", ["bar", "lines"])
def test_the_rate_after_a_resume_leaves_out_the_images_done_before_it(mode):
    now = [100.0]
    with mock.patch.object(progress.time, "monotonic", lambda: now[0]):
        stream = io.StringIO()
        bar = progress.Progress(0, errors=0, mode=mode, stream=stream)
        bar.reset(5000, 4000, 0)                  # what the driver does once it knows the resume point
        bar.update(4000, 0, force=True)
        now[0] += 2.0
        bar.update(4020, 0, force=True)
        bar.close()
    assert bar.rate() == pytest.approx(10.0)
    assert "10.0 img/s" in stream.getvalue().splitlines()[-1].split("\r")[-1]
