import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from nas.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _draw():
    return (random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist())


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_round_trip_with_rng_state(tmp_path):
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    _draw()
    state = {"kind": "net", "config": {"lr": 1e-3, "widths": [4, 8], "name": "x", "seed": np.int64(3)},
             "model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 2, "rng": rng_state()}
    expected = _draw()
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", state)
    assert path.is_file() and "format_version" not in state  # the caller's dict is not changed
    _draw()  # move every stream on

    loaded = load_checkpoint(path, kind="net")
    assert loaded["format_version"] == CHECKPOINT_VERSION and loaded["epoch"] == 2
    assert loaded["config"] == {"lr": 1e-3, "widths": [4, 8], "name": "x", "seed": 3}
    set_rng_state(loaded["rng"])
    assert _draw() == expected
    net2 = _net()
    load_state_dict_checked(net2, loaded["model"])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert load_checkpoint(path)["kind"] == "net"  # no kind check asked


def test_save_needs_kind_config_and_plain_data(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "a.pt", {"config": {}})
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "a.pt", {"kind": "net"})
    with pytest.raises(TypeError, match=r"\['config'\]\['out'\].*PosixPath"):
        save_checkpoint(tmp_path / "a.pt", {"kind": "net", "config": {"out": tmp_path}})
    assert not (tmp_path / "a.pt").exists()


def test_atomic_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"kind": "net", "config": {}, "step": 1})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"kind": "net", "config": {}, "step": 2, "w": torch.randn(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"kind": "supernet", "config": {}, "w": torch.randn(5000)})
    data = path.read_bytes()

    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt is corrupt"):
        load_checkpoint(trunc)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"garbage\.pt is corrupt"):
        load_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(empty)

    for name, obj in (("list.pt", [1, 2]), ("nokind.pt", {"config": {}})):
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name} is corrupt"):
            load_checkpoint(tmp_path / name)


def test_kind_mismatch_and_newer_version(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"kind": "net", "config": {}})
    with pytest.raises(CheckpointError, match=r"ck\.pt holds a 'net' checkpoint, expected 'supernet'"):
        load_checkpoint(path, kind="supernet")
    torch.save({"kind": "net", "config": {}, "format_version": CHECKPOINT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "new.pt")


def test_state_dict_mismatch():
    net = _net()
    sd = dict(net.state_dict())
    load_state_dict_checked(_net(), sd)
    bad = dict(sd)
    bad["3.weight"] = torch.zeros(10, 7)
    del bad["1.running_mean"]
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        load_state_dict_checked(_net(), bad)
    msg = str(e.value)
    assert msg.startswith("checkpoint does not match the network:")
    assert "1.running_mean" in msg and "extra.weight" in msg and "3.weight (10, 7) vs (10, 144)" in msg
