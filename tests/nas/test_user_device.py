"""A user's own device profile, given on ``hydra.searchpath``: checked before any work, searched end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["dataset=digits", "dataset.limit=512", "train.warmup_epochs=0", "train.epochs=1", "train.batch_size=64",
        "threads=1", "log_devices=[vpu]", "results_csv=null", "derive.method=select", "derive.candidates=4",
        "derive.finalists=0"]


def _profile(folder: Path, backends: str) -> str:
    (folder / "device").mkdir(parents=True)
    (folder / "device" / "pi.yaml").write_text(
        f"name: pi\ndescription: my board\ninput_shape: [1, 3, 224, 224]\nbatch_size: 1\nbackends: {backends}\n")
    return f"hydra.searchpath=[file://{folder}]"


def _search(run: Path, *args):
    return subprocess.run([sys.executable, "-m", "nas.search", *TINY, *args, f"hydra.run.dir={run}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_user_profile_is_searched_end_to_end(tmp_path):
    path = _profile(tmp_path / "myconf", "[standin:cortexA76cpu_tflite21]")
    r = _search(tmp_path / "run", "device=pi", "latency=30ms", path)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "run" / "arch.json").read_text())["metadata"]
    assert meta["search"]["device"] == "pi" and meta["latency_ms"]["pi"]["ms"] <= 30.0
    assert meta["latency_ms"]["pi"]["predictor"] == "standin/cortexA76cpu_tflite21"


def test_a_broken_user_profile_fails_before_any_work(tmp_path):
    path = _profile(tmp_path / "myconf", "[tpu:edge]")
    r = _search(tmp_path / "run", "device=pi", "latency=30ms", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("error: device=pi: device pi: unknown backend 'tpu:edge'; valid kinds: "
                                "nnmeter:<key>, standin:<key>, measured:<key>")
    assert not (tmp_path / "run").exists()
