"""CUDA end to end: a search, a retrain, resumes across the device change, NCCL DDP.

Skipped without a CUDA device; ``scripts/gpu_check.sh`` runs this file on a lent GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from nas.checkpoint import load_checkpoint
from nas.search import search
from nas.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (runs in scripts/gpu_check.sh on a lent GPU)")

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
QUIET = ["eval.profiles=[]", "eval.host_latency=false", "eval.onnx=false", "eval.every_epoch=false"]
RETRAIN = ["dataset=digits", "train.batch_size=64", "results_csv=null", *QUIET]


def _cfg(name: str, *overrides):
    with initialize_config_dir(str(CONF), version_base=None):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def arch_json(digits_arch_json) -> Path:
    return digits_arch_json


@pytest.mark.parametrize("precision", ["32", "tf32", "bf16", "16"])
def test_search_on_cuda(tmp_path, precision):
    cfg = _cfg("search", "dataset=digits", "results_csv=null", "train.warmup_epochs=0", "train.epochs=1",
               "log_devices=[vpu]", "latency=12ms", "accelerator=cuda", f"precision={precision}")
    summary = search(cfg, tmp_path)
    assert summary["meets_target"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["device"].startswith("cuda")


def test_retrain_on_cuda_then_resume_on_cpu_and_back(arch_json, tmp_path):
    common = [*RETRAIN, f"arch={arch_json}", "train.epochs=3"]
    assert train(_cfg("retrain", *common, "accelerator=cuda", "train.stop_after=1"), tmp_path) == \
        {"stopped_after_epoch": 1}
    assert load_checkpoint(tmp_path / "checkpoint.pt")["device"].startswith("cuda")
    assert train(_cfg("retrain", *common, "accelerator=cpu", "train.stop_after=1"), tmp_path) == \
        {"stopped_after_epoch": 2}
    assert load_checkpoint(tmp_path / "checkpoint.pt")["device"] == "cpu"
    res = train(_cfg("retrain", *common, "accelerator=cuda", "eval.onnx=true", "eval.host_latency=true",
                     "eval.latency_repeats=3", "eval.latency_warmup=1"), tmp_path)
    assert 0.5 < res["top1"] <= 1.0
    out = json.loads((tmp_path / "results.json").read_text())
    assert out["onnx"] and out["host_latency_ms"]["ms"] > 0  # the deployed CPU graph, after a CUDA run


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs two GPUs (one process per GPU)")
def test_two_gpu_nccl_ddp(arch_json, tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "nas.retrain",
                        *RETRAIN, f"arch={arch_json}", "train.epochs=1", "accelerator=cuda",
                        f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["world_size"] == 2


def test_two_processes_share_one_gpu_over_gloo(tmp_path):
    """More processes than GPUs: NCCL would fail with 'Duplicate GPU'; they share the GPU over gloo."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "nas.search",
                        "dataset=digits", "results_csv=null", "train.warmup_epochs=0", "train.epochs=1",
                        "log_devices=[vpu]", "latency=12ms", "accelerator=cuda", "derive.method=argmax",
                        f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "arch.json").read_text())["metadata"]
    assert meta["search"]["world_size"] == 2 and meta["ranks_agree"] is True
