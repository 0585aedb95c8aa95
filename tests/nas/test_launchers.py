"""Sweeps through Hydra's launchers: joblib (local processes, run here) and submitit (Slurm, composed)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
TINY = ["dataset=digits", "dataset.limit=512", "train.warmup_epochs=0", "train.epochs=1", "train.batch_size=64",
        "threads=1", "log_devices=[vpu]", "derive.method=select", "derive.candidates=4", "derive.finalists=0",
        "device=vpu"]


@pytest.mark.slow
def test_a_joblib_sweep_runs_its_jobs_in_parallel_processes(tmp_path):
    csv = tmp_path / "search_results.csv"
    r = subprocess.run([sys.executable, "-m", "nas.search", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        *TINY, "latency=20ms,30ms", f"results_csv={csv}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = pd.read_csv(csv)
    assert sorted(rows.target_ms) == [20.0, 30.0] and (rows.vpu_ms <= rows.target_ms).all()
    assert len(list((tmp_path / "sweep").glob("*latency=*/arch.json"))) == 2


def test_the_slurm_launcher_composes_with_every_entry_point():
    for entry in ("search", "retrain"):
        with initialize_config_dir(str(ROOT / "conf"), version_base=None):
            cfg = compose(entry, overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=60",
                                            "hydra.launcher.cpus_per_task=2"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
        assert cfg.hydra.launcher.timeout_min == 60 and cfg.hydra.launcher.cpus_per_task == 2
