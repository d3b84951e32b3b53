"""The one-command demo: generated images → mine → project → report, and a second run reusing it."""
import io
import subprocess
import sys

from cnnviz_fast.demo import DemoError, demo

import pytest


def test_demo_end_to_end_and_rerun(tmp_path):
    log = io.StringIO()
    index = demo(tmp_path / "d", images=30, layers="conv1,conv2", stream=log)
    assert index == tmp_path / "d" / "report" / "index.html" and index.is_file()
    text = log.getvalue()
    assert "30 generated" in text and "report: file://" in text
    assert len(list((tmp_path / "d" / "images").rglob("*.jpg"))) == 30
    assert (tmp_path / "d" / "report" / "layers" / "conv2.html").is_file()
    first = (tmp_path / "d" / "images" / "circles" / "000005.jpg").read_bytes()

    log = io.StringIO()
    demo(tmp_path / "d", images=30, layers="conv1,conv2", stream=log)
    assert "already there" in log.getvalue() and "already done: conv1, conv2" in log.getvalue()
    assert (tmp_path / "d" / "images" / "circles" / "000005.jpg").read_bytes() == first  # deterministic


def test_demo_with_other_settings_replaces_the_run(tmp_path):
    demo(tmp_path / "d", images=20, layers="conv1", quiet=True)
    demo(tmp_path / "d", images=25, layers="conv1", quiet=True)
    assert len(list((tmp_path / "d" / "images").rglob("*.jpg"))) == 25


def test_demo_refuses_too_few_images(tmp_path):
    with pytest.raises(DemoError):
        demo(tmp_path, images=3, quiet=True)


def test_demo_cli_help():
    p = subprocess.run([sys.executable, "-m", "cnnviz_fast", "demo", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--out" in p.stdout
