"""``nas.api``: search, derive and retrain from Python, on the digits data."""

import json

import pytest

from nas.api import Result, config, derive, retrain, search
from nas.config import ConfigError
from search_spaces.arch import Arch

QUIET = ["threads=1", "accelerator=cpu", "results_csv=null"]


def test_search_derive_and_retrain_from_python(tmp_path):
    found = search(tmp_path / "s", dataset="digits", device="vpu", latency="30ms", log_devices=["vpu"],
                   overrides=[*QUIET, "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=64"])
    assert isinstance(found, Result) and found.arch_path == tmp_path / "s" / "arch.json"
    assert found.choices == Arch.load(found.arch_path).choices
    assert found.latency_ms["vpu"]["ms"] <= 30.0 and "stand-in" in found.latency_ms["vpu"]["provenance"]
    assert found.metadata["search"]["dataset"] == "digits"

    gpu = derive(tmp_path / "d", supernet=found.run_dir, device="gpu", latency="1ms", log_devices=["gpu"],
                 overrides=[*QUIET, "derive.method=budgeted"])
    assert gpu.latency_ms["gpu"]["ms"] <= 1.0 and gpu.metadata["supernet"]["run_dir"] == str(found.run_dir.resolve())

    trained = retrain(tmp_path / "r", arch=found.arch_path, overrides=[
        *QUIET, "dataset.limit=512", "train.epochs=1", "train.batch_size=64", "eval.profiles=[vpu]",
        "eval.host_latency=false", "eval.onnx=false", "eval.every_epoch=false"])
    assert trained.choices == found.choices and 0 < trained.top1 <= 1
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["dataset"] == "digits"  # the dataset the architecture was searched on, as on the command line
    assert trained.top1 == results["top1"] and set(trained.latency_ms) == {"vpu"}


def test_options_are_checked_as_on_the_command_line(tmp_path):
    cfg = config("search", {"device": "cpu", "log_devices": ["cpu", "gpu"], "keep_checkpoint": False})
    assert cfg.device.name == "cpu" and list(cfg.log_devices) == ["cpu", "gpu"] and cfg.keep_checkpoint is False
    with pytest.raises(ConfigError, match="train.batch_size=0 is invalid"):
        search(tmp_path, dataset="digits", overrides=["train.batch_size=0"])
    assert not (tmp_path / "arch.json").exists()
