"""The `mine` command: bad input skipped and recorded, the error budget, clear messages for bad
models / layers / devices, progress output and the closing summary."""
from __future__ import annotations

import io
import os

import pytest

from cnnviz_fast.cli import main
from cnnviz_fast._progress import Progress
from _support.mining import bad_zoo, cli, jpeg, make_tar, photo, query, tiny  # noqa: F401


@pytest.fixture(scope="module")
def zoo_folder(tmp_path_factory):
    """20 good images, the bad-input zoo, and a dangling symlink (a file that vanished)."""
    root = tmp_path_factory.mktemp("zoo")
    for k in range(20):
        (root / f"good{k:02d}.jpg").write_bytes(jpeg(photo(k)))
    for name, (data, _) in bad_zoo().items():
        (root / name).write_bytes(data)
    os.symlink(root / "does-not-exist.jpg", root / "vanished.jpg")
    return root


def test_bad_input_is_skipped_recorded_and_counted(tiny, zoo_folder, tmp_path):
    r = cli(tiny, zoo_folder, "--out", tmp_path, "--top-k", "3", "--progress", "lines")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "DecompressionBombWarning" not in r.stderr
    errors = {os.path.basename(p): e for _, p, e in query(tmp_path / "results.db", "SELECT * FROM errors")}
    expected = {name: reason for name, (_, reason) in bad_zoo().items() if reason is not None}
    expected["vanished.jpg"] = "not found"
    assert set(errors) == set(expected)
    for name, reason in expected.items():
        assert reason in errors[name], (name, errors[name])
    n_images = 20 + len(bad_zoo()) + 1
    assert query(tmp_path / "results.db", "SELECT COUNT(*) FROM images")[0][0] == n_images
    good = n_images - len(expected)
    assert {r[0] for r in query(tmp_path / "results.db", "SELECT images FROM unit_stats")} == {good}
    assert f"errors {len(expected)} (" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tiny, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "a.jpg").write_bytes(jpeg(photo(0)))
    (data / "b.jpg").write_bytes(jpeg(photo(1)))
    (data / "b.jpg").chmod(0)
    assert main(["mine", str(tiny), str(data), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "permission denied" in query(tmp_path / "o" / "results.db", "SELECT error FROM errors")[0][0]


def test_max_error_rate_gives_a_nonzero_exit(tiny, zoo_folder, tmp_path):
    r = cli(tiny, zoo_folder, "--out", tmp_path, "--max-error-rate", "0.05", "--batch-size", "4")
    assert r.returncode == 3
    assert "more than --max-error-rate 0.05" in r.stderr and "Traceback" not in r.stderr
    assert main(["mine", str(tiny), str(zoo_folder), "--out", str(tmp_path / "ok"), "--quiet", "--max-error-rate", "0.5"]) == 0


def test_truncated_tar_shard(tiny, tmp_path):
    members = [(f"{k:03d}.jpg", jpeg(photo(k, (64, 48)))) for k in range(6)]
    shard = make_tar(tmp_path / "s-0.tar", members)
    make_tar(tmp_path / "s-1.tar", [("z.jpg", jpeg(photo(9)))])
    data = shard.read_bytes()
    shard.write_bytes(data[:data.index(members[3][1]) + 100])
    r = cli(tiny, str(tmp_path / "s-{0..1}.tar"), "--out", tmp_path / "o", "--progress", "lines")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "truncated" in r.stderr
    rows = query(tmp_path / "o" / "results.db", "SELECT image_id, path, error FROM errors")
    assert len(rows) == 1 and rows[0][0] == 3 and rows[0][1].endswith("s-0.tar/003.jpg")
    assert "truncated mid-member" in rows[0][2]
    assert query(tmp_path / "o" / "results.db", "SELECT path FROM images WHERE image_id = 4")[0][0].endswith("s-1.tar/z.jpg")


def test_bad_model_messages(tiny, zoo_folder, tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"definitely not protobuf" * 10)
    for model, words in [(junk, "cannot load model"), (tmp_path / "missing.onnx", "cannot load model"),
                         (tmp_path, "cannot load model")]:
        r = cli(model, zoo_folder, "--out", tmp_path / "o")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = cli(tiny, zoo_folder, "--out", tmp_path / "o", "--layers", "conv2,conv9")
    assert r.returncode == 2 and "--layers" in r.stderr and "conv9" in r.stderr and "conv1" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli(tiny, tmp_path / "nowhere", "--out", tmp_path / "o")
    assert r.returncode == 2 and "DATA" in r.stderr and "Traceback" not in r.stderr
    assert main(["mine", str(tiny), str(zoo_folder), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2


def test_device_choice_is_said_and_cuda_refusal_explains(tiny, zoo_folder, tmp_path):
    from cnnviz_fast.runtime import cuda_blocker

    r = cli(tiny, zoo_folder, "--out", tmp_path / "a", "--progress", "lines")
    assert "device: " in r.stderr and "(auto" in r.stderr
    blocker = cuda_blocker()
    if blocker is None:
        pytest.skip("CUDA is usable here")
    r = cli(tiny, zoo_folder, "--out", tmp_path / "b", "--device", "cuda")
    assert r.returncode == 2 and "--device cuda cannot be used" in r.stderr and blocker in r.stderr
    assert not (tmp_path / "b" / "results.db").exists()


def test_quiet_and_plain_lines(tiny, zoo_folder, tmp_path):
    r = cli(tiny, zoo_folder, "--out", tmp_path / "q", "--quiet")
    assert r.returncode == 0 and r.stderr == "" and r.stdout == ""
    r = cli(tiny, zoo_folder, "--out", tmp_path / "l", "--progress", "lines")
    lines = r.stderr.splitlines()
    assert any(line.startswith("mining: 35/35 images (100.0%)") for line in lines)
    assert "\r" not in r.stderr
    assert "mining finished" in r.stderr and "img/s" in r.stderr and str(tmp_path / "l") in r.stderr


def test_progress_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    p = Progress(1000, mode="auto", stream=s, interval=0)
    for k in range(1, 11):
        p.update(100 * k, k // 3)
    p.message("a note")
    p.close()
    text = s.getvalue()
    assert p.mode == "bar" and "\r" in text and "img/s" in text and "ETA" in text and "errors 3" in text
    assert "1,000/1,000" in text and "a note\n" in text
