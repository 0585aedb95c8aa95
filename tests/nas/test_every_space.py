"""Every registered search space builds its latency table on every stand-in profile and runs a
one-step search (one weight step, one architecture step) on the built-in digits data."""

import math
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from latency.lut import get_table
from latency.profiles import load_profile
from nas.search import search
from search_spaces.arch import Arch
from search_spaces.spaces import SPACES, get_space

CONF = Path(__file__).resolve().parents[2] / "conf"
PROFILES = ("cpu", "vpu", "gpu")  # the stand-in profiles (host is measured)
ONE_STEP = ["dataset=digits", "dataset.limit=80", "train.val_fraction=0.5", "train.batch_size=32",
            "train.warmup_epochs=0", "train.epochs=1", "threads=1", "log_devices=[cpu,vpu,gpu]"]


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_has_a_config(name):
    assert (CONF / "search_space" / f"{name}.yaml").is_file()


@pytest.mark.parametrize("name", sorted(SPACES))
@pytest.mark.parametrize("device", PROFILES)
def test_table_and_one_step_search(name, device, tmp_path):
    space = get_space(name)
    table = get_table(space, load_profile(device), progress=False)
    assert table.ops() == [list(c) for c in space.all_candidates()]
    lo, hi = table.range_ms()
    assert 0 < table.fixed_ms <= lo < hi and math.isfinite(hi)
    target = (lo + hi) / 2
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("search", overrides=[*ONE_STEP, f"search_space={name}", f"device={device}",
                                           f"latency={target:.4f}ms"])
    summary = search(cfg, tmp_path)
    arch = Arch.load(tmp_path / "arch.json")
    assert arch.space == name and len(arch.choices) == len(space.layers())
    history = pd.read_csv(tmp_path / "history.csv")
    assert history.step.tolist() == [1] and math.isfinite(history.arch_loss[0])  # one weight + one arch step
    meta = arch.metadata
    assert summary == meta and meta["search"]["epochs"] == 1
    assert set(meta["latency_ms"]) == set(PROFILES)
    assert meta["latency_ms"][device]["ms"] == pytest.approx(table.arch_ms(arch), rel=1e-6)
    assert meta["latency_ms"][device]["ms"] <= target and meta["meets_target"]
