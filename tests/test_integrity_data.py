"""Hostile datasets (issue 11): FIFOs, devices and sockets among the images, oversized files,
names that are not UTF-8, list files with BOMs, spaces and repeats, unreadable folders, files
rewritten between a kill and the resume, an output folder inside the data. Each is made here."""
from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cnnviz_fast.data import DecodeError, open_manifest
from cnnviz_fast.data._files import DEFAULT_MAX_BYTES
from cnnviz_fast.errors import ConfigMismatch, MiningError
from cnnviz_fast.mining import mine
from _support.mining import ROOT, jpeg, make_tar, photo, query, tiny  # noqa: F401

BAD_NAME = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
BAD_DIR = os.fsdecode(b"d\xff")


def _bounded(fn, seconds: float = 60.0):
    """fn() in a thread, failing the test (not hanging it) if it does not return in time."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} did not return within {seconds} s (blocked)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hostile_folder(root: Path) -> Path:
    root.mkdir()
    for k in range(6):
        (root / f"ok{k}.jpg").write_bytes(jpeg(photo(k)))
    os.mkfifo(root / "y.jpg")
    os.symlink("/dev/zero", root / "x.jpg")
    os.symlink("/dev/urandom", root / "u.jpg")
    (root / BAD_DIR).mkdir()
    (root / BAD_DIR / BAD_NAME).write_bytes(jpeg(photo(9)))
    return root


def _reason(m, name: str) -> str:
    i = [m.name(j) for j in range(len(m))].index(name)
    with pytest.raises(DecodeError) as err:
        _bounded(lambda: m.read(i))
    return str(err.value)


def test_fifo_devices_and_sockets_are_refused_unopened(tmp_path, monkeypatch):
    root = _hostile_folder(tmp_path / "d")
    sock = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(root)  # a relative name: socket paths are limited to ~100 bytes
    sock.bind("s.jpg")
    try:
        m = open_manifest(root)
        assert "FIFO" in _reason(m, "y.jpg")
        assert "character device" in _reason(m, "x.jpg")
        assert "character device" in _reason(m, "u.jpg")
        assert "socket" in _reason(m, "s.jpg")
    finally:
        sock.close()


def test_dev_zero_is_not_read_until_memory_runs_out(tmp_path):
    """In a child with 1 GiB of address space: reading /dev/zero would end in MemoryError."""
    root = _hostile_folder(tmp_path / "d")
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from cnnviz_fast.data import DecodeError, open_manifest
        m = open_manifest({str(root)!r})
        for name in ("x.jpg", "u.jpg"):
            try:
                m.read([m.name(i) for i in range(len(m))].index(name))
            except DecodeError as exc:
                print(name, exc)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("character device") == 2, r.stdout


def test_reads_are_bounded_and_the_limit_travels_in_the_spec(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    big, small = jpeg(photo(1, (400, 300)), quality=95), jpeg(photo(2, (20, 20)))
    assert len(big) > 4000 > len(small)
    (root / "big.jpg").write_bytes(big)
    (root / "small.jpg").write_bytes(small)
    m = open_manifest(root, max_bytes=4000)
    assert m.spec["max_bytes"] == 4000 and m.max_bytes == 4000
    assert m.read(1) == small
    with pytest.raises(DecodeError, match="too large: .* 4,000 bytes"):
        m.read(0)
    again = open_manifest(m.spec)  # the projection pass rebuilds the manifest from the spec
    assert again.max_bytes == 4000 and again.fingerprint() == m.fingerprint()
    assert "max_bytes" not in open_manifest(root).spec and open_manifest(root).max_bytes == DEFAULT_MAX_BYTES
    shard = make_tar(tmp_path / "s.tar", [("big.jpg", big), ("small.jpg", small)])
    t = open_manifest(shard, max_bytes=4000)
    assert t.read(1) == small
    with pytest.raises(DecodeError, match="tar member too large"):
        t.read(0)
    with pytest.raises(ValueError, match="max_bytes"):
        open_manifest(root, max_bytes=0)


def test_list_file_or_shard_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "files.txt")
    with pytest.raises(ValueError, match="list file is not a regular file.*FIFO"):
        _bounded(lambda: open_manifest(tmp_path / "files.txt"))
    os.mkfifo(tmp_path / "s.tar")
    with pytest.raises(ValueError, match="tar shard is not a regular file.*FIFO"):
        _bounded(lambda: open_manifest(tmp_path / "s.tar"))


def test_names_that_are_not_utf8_are_read_and_shown_escaped(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / BAD_NAME).write_bytes(jpeg(photo(1)))
    m = open_manifest(root)
    assert m.name(0) == "caf\\xe9.jpg" and m.path(0).endswith("caf\\xe9.jpg")
    assert m.read(0) == (root / BAD_NAME).read_bytes()
    listing = tmp_path / "files.txt"
    listing.write_bytes(b"d/caf\xe9.jpg\n")
    lm = open_manifest(listing)
    assert lm.name(0) == "d/caf\\xe9.jpg" and lm.read(0) == m.read(0)
    shard = make_tar(tmp_path / "s.tar", [(BAD_NAME, m.read(0))])
    tm = open_manifest(shard)
    assert tm.name(0) == "s.tar/caf\\xe9.jpg" and tm.read(0) == m.read(0)


def test_list_bom_spaces_comments_crlf_and_repeats(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(photo(1)))
    (tmp_path / " sp ace .jpg").write_bytes(jpeg(photo(2)))
    (tmp_path / "#hash.jpg").write_bytes(jpeg(photo(3)))
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    listing = tmp_path / "files.txt"
    lines = ["a.jpg", " sp ace .jpg", "# a comment", "./#hash.jpg", "   ", "./a.jpg", str(tmp_path / "a.jpg"),
             "link.jpg", "never.jpg", "never.jpg"]
    listing.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    m = open_manifest(listing)
    assert [m.name(i) for i in range(len(m))] == ["a.jpg", " sp ace .jpg", "./#hash.jpg", "never.jpg"]
    assert m.read(1) == (tmp_path / " sp ace .jpg").read_bytes()
    assert len(m.warnings) == 1 and "4 repeated entries dropped" in m.warnings[0], m.warnings
    assert "lines 1 and 6" in m.warnings[0]
    with pytest.raises(DecodeError, match="did not exist when the dataset was listed"):
        m.read(3)
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(DecodeError, match="vanished since the dataset was listed"):
        m.read(0)
    with pytest.raises(DecodeError, match="broken symbolic link"):
        _bounded(lambda: open_manifest(tmp_path)).read(2)  # " sp ace .jpg", "#hash.jpg", link.jpg (dangling)


def test_unreadable_folder_is_noted(tmp_path, monkeypatch):
    root = tmp_path / "d"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "a.jpg").write_bytes(jpeg(photo(1)))
    (root / "b.jpg").write_bytes(jpeg(photo(2)))
    real = os.scandir

    def scandir(path="."):  # what the kernel answers for a folder without read permission (tests run as root)
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    m = open_manifest(root)
    assert [m.name(i) for i in range(len(m))] == ["b.jpg"]
    assert len(m.warnings) == 1 and "locked" in m.warnings[0] and "left out" in m.warnings[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists every folder (the test above stands in)")
def test_unreadable_folder_is_noted_for_real(tmp_path):
    root = tmp_path / "d"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "a.jpg").write_bytes(jpeg(photo(1)))
    (root / "b.jpg").write_bytes(jpeg(photo(2)))
    (root / "locked").chmod(0)
    try:
        m = open_manifest(root)
    finally:
        (root / "locked").chmod(0o755)
    assert len(m) == 1 and "locked" in m.warnings[0] and "left out" in m.warnings[0]


def test_content_fingerprint_sees_rewrites_under_the_same_names(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for k in range(3):
        (root / f"{k}.jpg").write_bytes(jpeg(photo(k)))
    before = open_manifest(root)
    assert open_manifest(root).content_fingerprint() == before.content_fingerprint()
    st = os.stat(root / "1.jpg")
    os.utime(root / "1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = open_manifest(root)
    assert after.fingerprint() == before.fingerprint()  # same names, same ids
    assert after.content_fingerprint() != before.content_fingerprint()
    shard = make_tar(tmp_path / "s.tar", [("a.jpg", jpeg(photo(1)))])
    t0 = open_manifest(shard).content_fingerprint()
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert open_manifest(shard).content_fingerprint() != t0


def test_miner_survives_the_hostile_folder_in_a_real_process(tiny, tmp_path):
    """FIFO, /dev/zero, /dev/urandom and a non-UTF-8 folder and file name: the run finishes, each
    bad file is an error row, the odd name is a readable path in results.db and in the report."""
    root = _hostile_folder(tmp_path / "d")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "cnnviz_fast", "mine", str(tiny), str(root), "--out", str(out),
                        "--batch-size", "4", "--workers", "2", "--top-k", "2", "--quiet"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    db = out / "results.db"
    errors = dict(query(db, "SELECT path, error FROM errors"))
    assert {Path(p).name for p in errors} == {"x.jpg", "u.jpg", "y.jpg"}
    assert all("not a regular file" in e for e in errors.values())
    paths = [p for (p,) in query(db, "SELECT path FROM images")]
    odd = str(root / "d\\xff" / "caf\\xe9.jpg")
    assert odd in paths
    assert odd not in errors
    assert query(db, "SELECT MAX(images) FROM unit_stats")[0][0] == 7  # the six ok*.jpg and the odd name
    from cnnviz_fast.projection import project
    from cnnviz_fast.reporting import report

    assert not project(out, progress="none").stale  # reads the odd name again, by its bytes
    index = report(out)
    html = "".join(p.read_text(encoding="utf-8") for p in index.parent.rglob("*.html"))
    assert "caf\\xe9.jpg" in html or "caf\\\\xe9.jpg" in html


def test_dataset_warnings_are_recorded_with_the_run(tiny, tmp_path):
    members = [(f"{k}.jpg", jpeg(photo(k))) for k in range(6)]
    shard = make_tar(tmp_path / "s.tar", members)
    data = shard.read_bytes()
    shard.write_bytes(data[:data.index(members[4][1]) + 10])  # cut inside member 4
    out = tmp_path / "out"
    mine(tiny, shard, out, top_k=2, batch_size=4, workers=1, progress="none")
    run = dict(query(out / "results.db", "SELECT key, value FROM run"))
    assert "truncated" in run["dataset_warnings"] and "s.tar" in run["dataset_warnings"]


def test_out_inside_the_data_folder_is_refused_up_front(tiny, tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg(photo(1)))
    for out in (root / "viz", root):
        with pytest.raises(MiningError, match="inside the dataset folder"):
            mine(tiny, root, out, progress="none")
        assert not (out / "results.db").exists()


def _kill_after_first_checkpoint(args: list[str], db: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cnnviz_fast", "mine", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    if int(dict(query(db, "SELECT key, value FROM progress"))["images_done"]) > 0:
                        break
                except (sqlite3.Error, KeyError):
                    pass
            time.sleep(0.05)
        assert proc.poll() is None, "the miner finished before it could be killed"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_files_rewritten_between_kill_and_resume_are_refused(tiny, tmp_path):
    from cnnviz_fast.datasets.synthetic import generate

    root = tmp_path / "d"
    generate(root, 320, seed=3, size=40)
    out = tmp_path / "out"
    args = [str(tiny), str(root), "--out", str(out), "--top-k", "2", "--batch-size", "4", "--workers", "1",
            "--threads", "1", "--checkpoint-every", "4", "--quiet"]
    _kill_after_first_checkpoint(args, out / "results.db")
    victim = sorted(p for p in root.rglob("*.jpg"))[0]
    victim.write_bytes(jpeg(photo(99, (40, 40))))  # other pixels, same name
    r = subprocess.run([sys.executable, "-m", "cnnviz_fast", "mine", *args], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "rewritten" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ConfigMismatch, match="rewritten"):
        mine(tiny, root, out, top_k=2, batch_size=4, workers=1, progress="none")
    summary = mine(tiny, root, out, top_k=2, batch_size=4, workers=1, progress="none", overwrite=True)
    assert summary.status == "finished"
    st = victim.stat()  # a finished run is left as it is, with a note
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    text = io.StringIO()
    again = mine(tiny, root, out, top_k=2, batch_size=4, workers=1, progress="lines", stream=text)
    assert again.already_finished and "rewritten" in text.getvalue()


@pytest.mark.parametrize("catcher", ["any thread", "a foreign thread"])
def test_decode_threads_stop_on_ctrl_c_even_when_a_read_never_returns(tmp_path, catcher):
    """A read blocked forever (a FIFO opened without O_NONBLOCK, a hung mount) must not keep the
    process alive after SIGINT. "a foreign thread": only a thread that is neither the main one nor
    a decode thread can take the signal (as ONNX Runtime's threads can), so the main thread's wait
    is not interrupted and must notice the handler's flag by itself."""
    foreign = textwrap.dedent("""
        import signal, time
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        def catch():
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            time.sleep(3600)
        threading.Thread(target=catch, daemon=True).start()
    """) if catcher == "a foreign thread" else ""
    # The child starts with Python's own SIGINT handler even where the runner ignores SIGINT (a
    # shell's background job does, and its children inherit that).
    code = textwrap.dedent("""
        import signal, sys, threading
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from cnnviz_fast.data import BatchLoader, Manifest, Preprocess
        from _support.mining import PRE
        {foreign}

        class Stuck(Manifest):
            kind = "folder"
            def path(self, i):
                return f"/stuck/{i}.jpg"
            def read(self, i):
                sys.stdout.write("reading\\n")  # one write: two workers' lines must not interleave
                sys.stdout.flush()
                threading.Event().wait()

        loader = BatchLoader(Stuck({"kind": "folder", "root": "/stuck"}, ["a.jpg", "b.jpg"]),
                             Preprocess.from_metadata(PRE), batch_size=2, workers=2)
        try:
            with loader:
                next(iter(loader))
        except KeyboardInterrupt:
            print("stopped", flush=True)
            sys.exit(130)
    """).replace("{foreign}", foreign)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip().startswith("reading")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "stopped" in out and "still blocked" in err
