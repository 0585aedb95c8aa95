"""Retrain / train / evaluate on the built-in digits data (16x16, 10 classes): small, real, always there."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import nas.trainer as trainer
from nas.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nas.job import eval_weights
from nas.loops import TrainingDiverged
from nas.trainer import train
from search_spaces.arch import Arch, build_net
from search_spaces.spaces import get_space, space_from_config
from supernet.supernet import Supernet
from tests.helpers import liven, scalar_tags

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
QUIET = ["eval.profiles=[]", "eval.host_latency=false", "eval.onnx=false", "eval.every_epoch=false"]
FAST = ["dataset=digits", "dataset.limit=512", "threads=1", "train.batch_size=64", "results_csv=null",
        "accelerator=cpu"]  # bitwise resumes and gloo DDP: on a GPU machine auto would pick CUDA


def _cfg(name: str, *overrides):
    with initialize_config_dir(str(CONF), version_base=None):
        return compose(name, overrides=[*FAST, *overrides])


def _cli(module: str, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def arch_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    get_space("quadra").with_input((1, 16, 16), 10, 2).random_arch(0).save(path)
    return path


@pytest.fixture(scope="module")
def trained(arch_json, tmp_path_factory) -> Path:
    """One short epoch with every output: results.json, model.onnx, results CSV."""
    run = tmp_path_factory.mktemp("run")
    cfg = _cfg("retrain", f"arch={arch_json}", "train.epochs=1", f"results_csv={run.parent / 'results.csv'}",
               "eval.latency_repeats=5", "eval.latency_warmup=2")
    train(cfg, run)
    return run


@pytest.mark.parametrize("name", ["retrain", "train", "evaluate"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_configs_compose_with_every_dataset(name, dataset):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose(name, overrides=[f"dataset={dataset}"])
    assert cfg.dataset.name == dataset
    assert cfg.eval.profiles == ["cpu", "vpu", "gpu", "host"]
    if name != "evaluate":
        assert cfg.dataset.limit is None  # retraining uses the full training set
        assert cfg.train.lr == 2e-3 and cfg.train.weight_decay == 0.05 and cfg.train.epochs == 5
        assert cfg.init == "scratch" and cfg.arch is None and cfg.model is None
        OmegaConf.to_container(cfg.train, resolve=True)
    else:
        assert cfg.checkpoint is None
    with initialize_config_dir(str(CONF), version_base=None):
        assert compose("evaluate").get("dataset") is None  # default: the checkpoint's dataset


def test_retrain_writes_results_onnx_and_csv(trained, arch_json):
    r = json.loads((trained / "results.json").read_text())
    assert r["dataset"] == "digits" and r["epochs"] == 1 and r["init"] == "scratch"
    assert 0.3 < r["top1"] <= 1.0 and r["num_test"] == 360
    arch = Arch.load(arch_json)
    assert r["choices"] == list(arch.choices) and r["arch_path"] == str(arch_json)
    assert r["params"] == sum(p.numel() for p in build_net(arch).parameters()) and r["macs"] > 0
    assert r["input_shape"] == [1, 16, 16]
    dep = r["deployment"]
    assert dep["input_shape"] == [3, 224, 224] and dep["num_classes"] == 1000 and dep["macs"] > 10 * r["macs"]
    assert dep["search_space"] == "quadra" and dep["lut"] is True
    assert set(r["latency_ms"]) == {"cpu", "vpu", "gpu", "host"}
    for name, lat in r["latency_ms"].items():
        if lat["error"] is None:
            assert lat["ms"] > 0 and lat["predictor"] and lat["provenance"], name
            assert "lookup table" in lat["method"]
        else:
            assert lat["ms"] is None and name != "host"  # only a missing predictor backend may fail
    host = r["latency_ms"]["host"]
    assert host["provenance"] == "measured" and host["whole_net_ms"] > 0  # a measured table's sum never alone
    assert host["table_error_pct"] == pytest.approx(100 * (host["ms"] - host["whole_net_ms"]) / host["whole_net_ms"])
    assert "whole_net_ms" not in r["latency_ms"]["vpu"]
    assert r["host_latency_ms"]["ms"] > 0 and r["host_latency_ms"]["input_shape"] == [1, 1, 16, 16]
    assert r["train_time_s"] > 0 and r["config"]["train"]["epochs"] == 1
    assert (trained / "model.onnx").is_file() and r["onnx"]["max_abs_diff"] <= 1e-3
    assert (trained / "history.csv").is_file()
    assert {"train/loss", "train/lr", "time/train_s", "hparam/test_top1"} <= scalar_tags(trained / "tb")
    ck = load_checkpoint(trained / "checkpoint.pt", kind="net")
    assert ck["epoch"] == 0 and Arch.from_dict(ck["arch"]).choices == arch.choices
    assert {"optimizer", "rng", "ema", "config", "model"} <= set(ck)
    table = pd.read_csv(trained.parent / "results.csv")
    assert len(table) == 1 and table.run_dir[0] == str(trained) and table.top1[0] == pytest.approx(r["top1"])
    assert {"latency_cpu_ms", "latency_vpu_ms", "latency_gpu_ms", "latency_host_ms", "train_time_s",
            "params", "macs", "dataset", "model"} <= set(table.columns)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(arch_json, tmp_path):
    common = [f"arch={arch_json}", "train.epochs=3", "train.ema_decay=0.9", "train.drop_path=0.1", *QUIET]
    train(_cfg("retrain", *common), tmp_path / "ref")
    # stopped at an epoch boundary, rerun in the same folder
    first = train(_cfg("retrain", *common, "train.stop_after=1"), tmp_path / "resumed")
    assert first == {"stopped_after_epoch": 1}
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 0
    train(_cfg("retrain", *common), tmp_path / "resumed")
    # killed mid-epoch, rerun in the same folder
    killed = tmp_path / "killed"
    args = ["-m", "nas.retrain", *FAST, *common, f"hydra.run.dir={killed}"]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    r = _cli(*args[1:])
    assert r.returncode == 0, r.stderr[-2000:]
    ref = load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    for run in ("resumed", "killed"):
        other = load_checkpoint(tmp_path / run / "checkpoint.pt")
        assert ref["epoch"] == other["epoch"] == 2 and ref["step"] == other["step"]
        for key in ("model", "ema"):
            assert ref[key].keys() == other[key].keys()
            assert all(torch.equal(ref[key][k], other[key][k]) for k in ref[key]), (run, key)
        res = json.loads((tmp_path / run / "results.json").read_text())
        assert res["evaluated_weights"] == "ema"


def test_resume_with_another_config_is_refused(arch_json, tmp_path):
    train(_cfg("retrain", f"arch={arch_json}", "train.epochs=0", *QUIET), tmp_path)
    with pytest.raises(CheckpointError, match=r"different config \(differs in: train.lr\)"):
        train(_cfg("retrain", f"arch={arch_json}", "train.epochs=0", "train.lr=1e-3", *QUIET), tmp_path)


def test_resume_follows_the_network_not_the_file_that_names_it(arch_json, tmp_path):
    # benchmarks share a retrain folder per network: a draw of another band, same choices, own path and metadata
    train(_cfg("retrain", f"arch={arch_json}", "train.epochs=1", "train.stop_after=1", *QUIET), tmp_path / "run")
    arch = Arch.load(arch_json)
    copy = tmp_path / "copy.json"
    Arch.from_dict({**arch.to_dict(), "metadata": {"derivation": "random draw of another band"}}).save(copy)
    res = train(_cfg("retrain", f"arch={copy}", "train.epochs=1", *QUIET), tmp_path / "run")
    assert 0 <= res["top1"] <= 1 and load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 0
    other = tmp_path / "other.json"
    flipped = list(arch.choices)
    flipped[0] = "identity" if flipped[0] != "identity" else next(c for c in arch.choices if c != "identity")
    Arch.from_dict({**arch.to_dict(), "choices": flipped}).save(other)
    with pytest.raises(CheckpointError, match="holds another architecture"):
        train(_cfg("retrain", f"arch={other}", "train.epochs=1", *QUIET), tmp_path / "run")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(arch_json, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer.compute_loss

    def poisoned(logits, target, smoothing):
        calls["n"] += 1
        loss = real(logits, target, smoothing)
        return loss * float("nan") if calls["n"] == 11 else loss  # 8 steps per epoch: epoch 2, step 3

    monkeypatch.setattr(trainer, "compute_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan .* at epoch 2, step 3 of 8 .*last good checkpoint "
                                               r"\(after epoch 1\) is kept"):
        train(_cfg("retrain", f"arch={arch_json}", "train.epochs=3", *QUIET), tmp_path)
    ck = load_checkpoint(tmp_path / "checkpoint.pt", kind="net")
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not (tmp_path / "results.json").exists()


def test_diverging_cli_run_exits_non_zero(arch_json, tmp_path):
    r = _cli("nas.retrain", f"arch={arch_json}", *FAST, *QUIET, "train.lr=1e30", "train.epochs=1",
             f"hydra.run.dir={tmp_path}")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "error: training diverged: loss is" in r.stderr and "at epoch 1, step" in r.stderr
    assert not (tmp_path / "checkpoint.pt").exists()


def test_corrupt_checkpoint_is_a_clear_error(arch_json, tmp_path):
    garbage = b"this is not a checkpoint" * 10
    (tmp_path / "checkpoint.pt").write_bytes(garbage)
    r = _cli("nas.retrain", f"arch={arch_json}", *FAST, *QUIET, "train.epochs=1", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "error:" in r.stderr and "corrupt or not a QuadraNAS checkpoint" in r.stderr
    assert (tmp_path / "checkpoint.pt").read_bytes() == garbage  # never a silent fresh start
    r = _cli("nas.evaluate", f"checkpoint={tmp_path / 'missing.pt'}")
    assert r.returncode == 2 and "error: no checkpoint at" in r.stderr


def test_quadratized_first_order_twin_starts_at_the_same_function(arch_json, tmp_path):
    twin_run, quad_run = tmp_path / "twin", tmp_path / "quad"
    train(_cfg("train", f"arch={arch_json}", "first_order=true", "train.epochs=1", *QUIET), twin_run)
    twin_ck = load_checkpoint(twin_run / "checkpoint.pt", kind="net")
    twin_arch = Arch.from_dict(twin_ck["arch"])
    arch = Arch.load(arch_json)
    assert twin_arch.choices == tuple(c.replace("quadra_", "convnext_") for c in arch.choices)
    train(_cfg("retrain", f"arch={arch_json}", f"init={twin_run / 'checkpoint.pt'}", "train.epochs=0", *QUIET),
          quad_run)
    quad_ck = load_checkpoint(quad_run / "checkpoint.pt", kind="net")
    assert "quadratized first-order twin" in quad_ck["init"]
    twin, quad = build_net(twin_arch).eval(), build_net(arch).eval()
    twin.load_state_dict(eval_weights(twin_ck))
    quad.load_state_dict(quad_ck["model"])
    for name, p in quad.named_parameters():
        if ".mixer.dwa." in name:
            assert not p.any(), name  # the quadratic term starts at zero
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        y_twin, y_quad = twin(x), quad(x)
    torch.testing.assert_close(y_quad, y_twin, rtol=0, atol=1e-6)
    r = json.loads((quad_run / "results.json").read_text())
    assert r["init"] == quad_ck["init"] and r["epochs"] == 0
    # a checkpoint of an unrelated architecture is refused
    other = get_space("quadra").with_input((1, 16, 16), 10, 2).random_arch(5)
    other.save(tmp_path / "other.json")
    with pytest.raises(CheckpointError, match="neither this one nor its first-order twin"):
        train(_cfg("retrain", f"arch={tmp_path / 'other.json'}", f"init={twin_run / 'checkpoint.pt'}",
                   "train.epochs=0", *QUIET), tmp_path / "other")


def test_supernet_weight_inheritance(tmp_path):
    search_space = {"name": "quadra", "widths": [8, 16, 24, 32], "depths": [2, 1, 2, 1], "kernels": [3, 5],
                    "expansions": [2], "input_shape": [3, 224, 224], "num_classes": 1000, "stem_stride": 4,
                    "train_stem_stride": 2}
    space = space_from_config({k: v for k, v in search_space.items() if k != "train_stem_stride"})
    train_space = space.with_input((1, 16, 16), 10, 2)
    torch.manual_seed(0)
    supernet = liven(Supernet(train_space), seed=1)
    config = {"search_space": search_space, "dataset": {"name": "digits"}, "seed": 0}
    save_checkpoint(tmp_path / "checkpoint.pt", {"kind": "supernet", "config": config, "epoch": 0, "step": 0,
                                                 "model": supernet.state_dict()})
    choices = ["quadra_k5_e2", "identity", "quadra_k3_e2", "quadra_k5_e2", "quadra_k3_e2", "quadra_k5_e2"]
    arch = train_space.arch(choices, {"config": config})
    arch.save(tmp_path / "arch.json")
    run = tmp_path / "run"
    train(_cfg("retrain", f"arch={tmp_path / 'arch.json'}", "init=supernet", "train.epochs=0", *QUIET), run)
    ck = load_checkpoint(run / "checkpoint.pt", kind="net")
    assert ck["init"] == f"supernet {tmp_path / 'checkpoint.pt'}"
    net = build_net(arch).eval()
    net.load_state_dict(ck["model"])
    supernet.eval().pin(choices)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), supernet(x), rtol=0, atol=0)
        assert not torch.allclose(build_net(arch).eval()(x), supernet(x))
    # the search's space (from its metadata) prices the deployment arch; no supernet in another shape
    r = json.loads((run / "results.json").read_text())
    assert r["deployment"]["search_space"] == "quadra" and r["deployment"]["lut"] is True
    with pytest.raises(ValueError, match="init=supernet needs the search's dataset shape"):
        train(_cfg("retrain", f"arch={tmp_path / 'arch.json'}", "init=supernet", "train.epochs=0",
                   "dataset.image_size=12", *QUIET), tmp_path / "other")


def test_fixed_model_with_adapted_shape_and_evaluate_cli(tmp_path):
    run = tmp_path / "run"
    res = train(_cfg("train", "model=quadranet25_xxs", "train.epochs=1", "dataset.image_size=20",
                     "eval.profiles=[host]", "eval.host_latency=false", "eval.onnx=false",
                     "eval.latency_repeats=3", "eval.latency_warmup=1"), run)
    assert res["model"] == "quadranet25_xxs" and res["input_shape"] == [1, 20, 20]
    assert res["deployment"]["lut"] is False and res["latency_ms"]["host"]["method"] == "whole network"
    assert res["deployment"]["params"] > res["params"]  # 1000 classes, 3 channels
    csv = tmp_path / "table.csv"
    (run / "results.json").unlink()
    r = _cli("nas.evaluate", f"checkpoint={run / 'checkpoint.pt'}", "eval.profiles=[]", "threads=1",
             "eval.latency_repeats=3", f"results_csv={csv}")
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((run / "results.json").read_text())
    assert again["top1"] == pytest.approx(res["top1"]) and again["model"] == "quadranet25_xxs"
    assert again["host_latency_ms"]["ms"] > 0 and (run / "model.onnx").is_file()
    assert len(pd.read_csv(csv)) == 1


def test_arch_macro_is_adapted_to_the_dataset(tmp_path):
    arch = get_space("quadra").with_input((3, 28, 28), 100, 2).random_arch(3)  # e.g. searched on another dataset
    arch.save(tmp_path / "arch.json")
    res = train(_cfg("retrain", f"arch={tmp_path / 'arch.json'}", "train.epochs=0", *QUIET), tmp_path / "run")
    assert res["input_shape"] == [1, 16, 16] and res["num_classes"] == 10
    assert "macro rebuilt for dataset digits" in res["notes"][0]
    bad = _cli("nas.retrain", "dataset=digits", "results_csv=null", f"hydra.run.dir={tmp_path / 'x'}")
    assert bad.returncode == 2 and "error: pass exactly one of arch=PATH/arch.json or model=NAME" in bad.stderr


def test_a_224_arch_file_trains_at_the_dataset_size(tmp_path):
    arch = get_space("quadra").random_arch(1)  # the deployment shape latency.predict prices: 224, stem stride 4
    assert arch.macro.stem_stride == 4 and arch.macro.input_shape == (3, 224, 224)
    arch.save(tmp_path / "arch.json")
    res = train(_cfg("retrain", f"arch={tmp_path / 'arch.json'}", "train.epochs=1", *QUIET), tmp_path / "run")
    assert res["input_shape"] == [1, 16, 16] and 0 < res["top1"] <= 1
    assert "stem stride 4 -> 2" in res["notes"][0]


def test_retrain_defaults_to_the_dataset_recorded_in_arch_json(tmp_path):
    arch = get_space("quadra").with_input((1, 16, 16), 10, 2).random_arch(2)
    Arch(arch.space, arch.macro, arch.choices, {"search": {"dataset": "digits"}}).save(tmp_path / "arch.json")
    args = [f"arch={tmp_path / 'arch.json'}", "train.epochs=0", "dataset.limit=256", "threads=1", "results_csv=null",
            *QUIET]
    r = _cli("nas.retrain", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"] == "digits"
    assert "dataset=digits, as recorded in" in (tmp_path / "run" / "retrain.log").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp(arch_json, tmp_path):
    csv = tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "nas.retrain", f"arch={arch_json}", *FAST, "eval.profiles=[]", "eval.host_latency=false",
           "train.epochs=1", f"results_csv={csv}", f"hydra.run.dir={tmp_path / 'run'}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["world_size"] == 2 and res["epochs"] == 1 and 0 < res["top1"] <= 1
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert len(pd.read_csv(csv)) == 1  # only rank 0 writes
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt", kind="net")
    assert ck["step"] == 512 // 64  # global batch 64 split over 2 processes
