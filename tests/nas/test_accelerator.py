"""accelerator= / precision= / channels_last= on the CPU, end to end on the built-in digits data.

The CUDA side (a search, a retrain and a resume on a GPU) is in tests/nas/test_cuda.py, which skips here and runs
in scripts/gpu_check.sh when a GPU is lent."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, DistributedSampler

from nas.accelerator import Accelerator, AcceleratorUnavailable, check_accelerator, parse_precision, resolve
from nas.checkpoint import load_checkpoint, save_checkpoint
from nas.config import ConfigError, check_config
from nas.data import TensorBatches, get_dataset, make_loader, to_device, train_val_split
from nas.search import search
from nas.trainer import train
from search_spaces.arch import Arch

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
NO_CUDA = not torch.cuda.is_available()
QUIET = ["eval.profiles=[]", "eval.host_latency=false", "eval.onnx=false", "eval.every_epoch=false"]
RETRAIN = ["dataset=digits", "dataset.limit=512", "threads=1", "train.batch_size=64", "results_csv=null", *QUIET]
SEARCH = ["dataset=digits", "dataset.limit=320", "threads=1", "train.batch_size=64", "results_csv=null",
          "train.warmup_epochs=0", "train.epochs=1", "log_devices=[vpu]", "device=vpu", "latency=12ms",
          "derive.method=select", "derive.candidates=4", "derive.finalists=0"]


def _cfg(name: str, *overrides):
    with initialize_config_dir(str(CONF), version_base=None):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def arch_json(digits_arch_json) -> Path:
    return digits_arch_json


def test_cpu_explicitly_and_auto_on_a_cpu_only_machine():
    cpu = resolve("cpu", "bf16", True)
    assert cpu.device == torch.device("cpu") and cpu.precision == "bf16" and cpu.channels_last
    assert not cpu.scaler.is_enabled() and resolve("cpu", 16).scaler.is_enabled()  # only fp16 scales the loss
    assert check_accelerator("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [parse_precision(v) for v in (32, "32", "bf16", 16, "16-mixed", "bf16-mixed")] == \
        ["32", "32", "bf16", "16", "16", "bf16"]
    x = torch.randn(2, 3, 4, 4)
    assert cpu.tensor(x).is_contiguous(memory_format=torch.channels_last)
    with cpu.autocast():
        assert torch.mm(torch.randn(2, 2), torch.randn(2, 2)).dtype == torch.bfloat16
    with resolve("cpu").autocast():
        assert torch.mm(torch.randn(2, 2), torch.randn(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("override,match", [("precision=8", "precision=8 is invalid; valid: 32, tf32, bf16, 16"),
                                            ("accelerator=tpu", "accelerator=tpu is invalid; valid: auto, cpu, cuda")])
def test_bad_accelerator_options_are_one_line_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        check_config(_cfg("retrain", "arch=" + str(ROOT / "pyproject.toml"), override), "retrain")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: accelerator=cuda is valid here")
@pytest.mark.parametrize("module", ["nas.search", "nas.retrain"])
def test_cuda_without_cuda_is_a_one_line_error_before_any_work(tmp_path, module):
    with pytest.raises(AcceleratorUnavailable, match="no CUDA device"):
        check_accelerator("cuda")
    run = tmp_path / "run"
    extra = ["dataset=digits"] if module == "nas.search" else ["model=quadranet36_xxs", "dataset=digits"]
    r = subprocess.run([sys.executable, "-m", module, "accelerator=cuda", *extra, f"hydra.run.dir={run}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr[-1000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: accelerator=cuda is invalid: this machine has no CUDA")
    assert not run.exists()  # before the run folder, the tables and the data


def test_in_memory_batches_follow_the_dataloader_order_on_the_device():
    """The batching that replaced the DataLoader for in-memory data yields the same batches for a seed."""
    train_set, _ = get_dataset("digits", "train")
    part, val = train_val_split(train_set, 0.2, 0)
    for ds in (train_set, part):
        for shuffle in (True, False):
            old = DataLoader(ds, batch_size=16, shuffle=shuffle, drop_last=True, num_workers=0,
                             generator=torch.Generator().manual_seed(3))
            new = make_loader(ds, 16, shuffle, 3, drop_last=True)
            assert isinstance(new, TensorBatches) and len(new) == len(old)
            for (x1, y1), (x2, y2) in zip(old, new, strict=True):
                assert torch.equal(x1, x2) and torch.equal(y1, y2)
        sampler = DistributedSampler(ds, 2, 1, shuffle=True, seed=5, drop_last=True)  # rank 1 of 2 under DDP
        old = DataLoader(ds, batch_size=8, sampler=sampler, drop_last=True)
        for (x1, y1), (x2, y2) in zip(old, make_loader(ds, 8, False, 5, True, sampler), strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(make_loader(part, 100, False, 0)) == -(-len(part) // 100)  # the last, partial batch is kept
    moved_part, moved_val = to_device((part, val), "cpu")
    assert moved_part.dataset is moved_val.dataset  # both splits share one copy of the tensors


@pytest.mark.slow
def test_bf16_search_and_retrain_end_to_end(tmp_path):
    summary = search(_cfg("search", *SEARCH, "accelerator=cpu", "precision=bf16"), tmp_path / "search")
    assert summary["meets_target"]
    saved = load_checkpoint(tmp_path / "search" / "checkpoint.pt", kind="supernet")
    assert saved["device"] == "cpu" and saved["precision"] == "bf16"
    arch = tmp_path / "search" / "arch.json"
    assert Arch.load(arch).metadata["config"]["precision"] == "bf16"
    res = train(_cfg("retrain", *RETRAIN, f"arch={arch}", "train.epochs=1", "precision=bf16"), tmp_path / "retrain")
    assert 0.2 < res["top1"] <= 1.0  # learned something in one epoch of 512 digits
    assert load_checkpoint(tmp_path / "retrain" / "checkpoint.pt")["precision"] == "bf16"


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["precision=16"], ["channels_last=true"]])
def test_fp16_with_a_loss_scaler_and_channels_last_retrain_end_to_end(arch_json, tmp_path, overrides):
    res = train(_cfg("retrain", *RETRAIN, f"arch={arch_json}", "train.epochs=1", *overrides), tmp_path)
    assert 0.15 < res["top1"] <= 1.0
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["scaler"]["scale"] > 0 if overrides == ["precision=16"] else state["scaler"] == {}


def test_weight_step_at_fp16_skips_an_overflowing_step():
    """precision=16: non-finite gradients are the scaler's business (step skipped, scale lowered), not a crash."""
    accel = Accelerator(torch.device("cpu"), "16")
    lin = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    before = lin.weight.detach().clone()
    with accel.autocast():
        loss = lin(torch.randn(3, 4)).sum() * float("inf")
    accel.backward(loss, opt, lin.parameters(), 5.0)
    scale = accel.scaler.get_scale()
    accel.apply(opt)
    assert torch.equal(lin.weight, before) and accel.scaler.get_scale() < scale


@pytest.mark.slow
def test_resume_across_a_device_change(arch_json, tmp_path, caplog):
    """A checkpoint that says it was written on a GPU (device metadata and CUDA RNG states) resumes here on the
    CPU: weights and optimizer load with map_location, CPU streams are restored, the rest is a warning."""
    common = ["train.epochs=2", f"arch={arch_json}"]
    assert train(_cfg("retrain", *RETRAIN, *common, "train.stop_after=1"), tmp_path) == {"stopped_after_epoch": 1}
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    assert state["device"] == "cpu" and state["precision"] == "32"
    state["device"] = "cuda:0"
    if NO_CUDA:
        state["rng"]["cuda"] = [torch.get_rng_state()]  # a CUDA generator's state, as a GPU run saves it
    save_checkpoint(path, state)
    caplog.set_level(logging.WARNING)
    with pytest.warns(UserWarning, match="CUDA") if NO_CUDA else _nothing():
        res = train(_cfg("retrain", *RETRAIN, *common, "accelerator=cpu"), tmp_path)
    assert any("written on cuda:0, this run is on cpu" in r.getMessage() for r in caplog.records)
    assert load_checkpoint(path)["epoch"] == 1 and json.loads((tmp_path / "results.json").read_text())["top1"] == \
        res["top1"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
