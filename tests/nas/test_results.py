"""``nas.results``: a search and the retrain of its export, joined in one table and one plot."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from nas.results import load_runs, pareto_front
from nas.search import search
from nas.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def _cfg(name: str, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return compose(name, overrides=["dataset=digits", "dataset.limit=512", "threads=1", "train.batch_size=64",
                                        *overrides])


def test_pareto_front_keeps_only_undominated_runs():
    lat = np.array([1.0, 2.0, 2.0, 3.0, 0.5])
    acc = np.array([0.8, 0.9, 0.85, 0.88, 0.7])
    assert pareto_front(lat, acc).tolist() == [True, True, False, False, True]


@pytest.mark.slow
def test_a_search_and_its_retrain_in_one_table_and_plot(tmp_path):
    search_csv, results_csv = tmp_path / "search_results.csv", tmp_path / "results.csv"
    search(_cfg("search", "train.warmup_epochs=0", "train.epochs=1", "log_devices=[vpu]", "device=vpu",
                "latency=12ms", "derive.method=select", "derive.candidates=4", "derive.finalists=0",
                f"results_csv={search_csv}"),
           tmp_path / "search")
    train(_cfg("retrain", f"arch={tmp_path / 'search' / 'arch.json'}", "train.epochs=0", "eval.profiles=[cpu,vpu]",
               "eval.host_latency=false", "eval.onnx=false", "eval.every_epoch=false", f"results_csv={results_csv}"),
          tmp_path / "retrain")
    runs = load_runs(results_csv, search_csv)
    assert len(runs) == 1 and runs.search_device[0] == "vpu" and runs.search_target_ms[0] == 12.0
    r = subprocess.run([sys.executable, "-m", "nas.results", f"search_csv={search_csv}",
                        f"results_csv={results_csv}", f"plot={tmp_path / 'results.png'}", "devices=[cpu,vpu]"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:4] == ["run", "top1", "epochs", "dataset"] and "vpu 12 ms" in row
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_no_runs_yet_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nas.results", f"results_csv={tmp_path / 'none.csv'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: results_csv=") and "Traceback" not in r.stderr
