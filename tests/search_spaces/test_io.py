import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from search_spaces import io
from search_spaces.io import STALE_AGE_S, atomic_write_bytes, atomic_write_text, clean_stale_temps

ROOT = Path(__file__).resolve().parents[2]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def test_new_file_mode_follows_umask(tmp_path, umask):
    umask(0o022)
    assert _mode(atomic_write_text(tmp_path / "a.json", "{}")) == 0o644
    umask(0o027)
    assert _mode(atomic_write_bytes(tmp_path / "b.pt", b"x")) == 0o640
    umask(0o002)
    assert _mode(atomic_write_text(tmp_path / "c.csv", "a\n")) == 0o664


def test_replace_keeps_existing_mode(tmp_path, umask):
    umask(0o077)  # the replacement must not take the umask's 0600 either
    path = tmp_path / "results.csv"
    path.write_text("old\n")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(path, mode)
        atomic_write_text(path, f"new {mode}\n")
        assert _mode(path) == mode and path.read_text() == f"new {mode}\n"


def test_writers_in_the_repo_keep_0644(tmp_path, umask):
    from nas.checkpoint import save_checkpoint
    from nas.report import append_results_row

    umask(0o022)
    ck = save_checkpoint(tmp_path / "checkpoint.pt", {"kind": "net", "config": {}})
    assert _mode(ck) == 0o644
    csv = tmp_path / "results.csv"
    append_results_row(csv, {"run_dir": "a", "top1": 0.5})
    assert _mode(csv) == 0o644
    os.chmod(csv, 0o664)
    append_results_row(csv, {"run_dir": "b", "top1": 0.6})  # an append rewrites the file
    assert _mode(csv) == 0o664 and len(csv.read_text().splitlines()) == 3


def test_only_io_creates_temp_files():
    """Every atomic writer goes through search_spaces.io (which sets modes and cleans stale temp files)."""
    offenders = []
    for pkg in ("nas", "search_spaces", "latency", "supernet", "experiments"):
        for py in (ROOT / pkg).rglob("*.py"):
            if py == ROOT / "search_spaces" / "io.py":
                continue
            text = py.read_text()
            if "mkstemp" in text or "NamedTemporaryFile" in text:
                offenders.append(str(py.relative_to(ROOT)))
    assert offenders == []


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_clean_stale_temps_rules(tmp_path):
    target = tmp_path / "checkpoint.pt"
    host = io._host()
    stale = {
        "untagged_old": ".checkpoint.pt.k3j_x9q1.tmp",  # an older version's mkstemp name
        "dead_pid": f".checkpoint.pt.{host}-{_dead_pid()}-0a1b2c3d.tmp",
        "own_pid_not_writing": f".checkpoint.pt.{host}-{os.getpid()}-0a1b2c3d.tmp",  # pid reused after a restart
        "other_host_old": ".checkpoint.pt.otherhost-1-0a1b2c3d.tmp",
    }
    kept = {
        "untagged_fresh": ".checkpoint.pt.zz81kq0a.tmp",
        "live_pid": f".checkpoint.pt.{host}-{os.getppid()}-0a1b2c3d.tmp",
        "other_host_fresh": ".checkpoint.pt.otherhost-1-ffff0000.tmp",
        "other_target": f".checkpoint.pt.bak.{host}-{_dead_pid()}-0a1b2c3d.tmp",  # checkpoint.pt.bak's
        "other_target_untagged": ".checkpoint.pt.bak.k3j_x9q1.tmp",
        "other_target2": f".arch.json.{host}-{_dead_pid()}-0a1b2c3d.tmp",
        "not_tmp": f".checkpoint.pt.{host}-{_dead_pid()}-0a1b2c3d.tmp.x",
        "no_tag": ".checkpoint.pt..tmp",
    }
    for name in (*stale.values(), *kept.values()):
        (tmp_path / name).write_bytes(b"partial")
    _age(tmp_path / stale["untagged_old"], STALE_AGE_S + 60)
    _age(tmp_path / stale["other_host_old"], STALE_AGE_S + 60)
    for name in kept.values():
        if name.startswith((".checkpoint.pt.bak.", ".arch.json.")):
            _age(tmp_path / name, STALE_AGE_S + 60)

    removed = clean_stale_temps(target)
    assert sorted(p.name for p in removed) == sorted(stale.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept.values())

    # the next write of the target cleans too, and leaves nothing of its own
    _age(tmp_path / kept["untagged_fresh"], STALE_AGE_S + 60)
    atomic_write_bytes(target, b"ok")
    assert target.read_bytes() == b"ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["checkpoint.pt", *(n for k, n in kept.items() if k != "untagged_fresh")])


# A writer that stops inside its write (after the temporary file is complete, before the replace) until told.
_WRITER = textwrap.dedent("""
    import os, sys
    from search_spaces import io
    real_fsync = os.fsync
    def fsync(fd):
        real_fsync(fd)
        print("writing", flush=True)
        sys.stdin.readline()
    os.fsync = fsync
    io.atomic_write_bytes(sys.argv[1], b"from child " * 1000)
""")


def _start_writer(target):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env)
    assert p.stdout.readline() == "writing\n"
    (tmp,) = [q for q in target.parent.iterdir() if q.name.startswith(f".{target.name}.")]
    assert tmp.stat().st_size == len(b"from child " * 1000)
    return p, tmp


def test_kill_9_mid_write_leaves_temp_that_next_write_removes(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, b"epoch 1")
    p, tmp = _start_writer(target)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert tmp.exists() and target.read_bytes() == b"epoch 1"  # what kill -9 leaves behind
    atomic_write_bytes(target, b"epoch 2")
    assert target.read_bytes() == b"epoch 2"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_concurrent_writer_keeps_its_temp_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    p, tmp = _start_writer(target)
    try:
        atomic_write_bytes(target, b"from parent")  # cleans the target's stale temp files: not the live one
        assert tmp.exists()
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0
    finally:
        p.kill()
    assert target.read_bytes() == b"from child " * 1000
    assert sorted(q.name for q in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_atomic_save_figure_writes_a_whole_png_and_keeps_the_old_one_on_failure(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "plot.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    io.atomic_save_figure(fig, path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and plt.fignum_exists(fig.number) is False

    bad, ax = plt.subplots()
    ax.text(0.5, 0.5, r"$\notacommand$")  # mathtext fails while rendering
    with pytest.raises(ValueError):
        io.atomic_save_figure(bad, path)
    assert path.read_bytes() == data and not plt.fignum_exists(bad.number)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
