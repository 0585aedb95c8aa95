"""``nas.derive``: one trained supernet, derived again for other devices and targets, on the digits data."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from latency.lut import get_table
from latency.profiles import load_profile
from nas.config import ConfigError
from nas.derivations import ladder_ms
from nas.derive import FRONT_CSV, FRONT_PNG, SUPERNET_KEYS, derivation_config, derive_from_supernet
from nas.search import search
from search_spaces.arch import Arch
from search_spaces.spaces import space_from_config
from supernet.derive import InfeasibleTarget

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
SEARCH = ["dataset=digits", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=64", "threads=1",
          "accelerator=cpu", "results_csv=null", "log_devices=[vpu]", "device=vpu", "latency=30ms",
          "derive.finalists=2"]
QUIET = ["threads=1", "accelerator=cpu", "results_csv=null", "derive.finalists=2"]


def _compose(name: str, *overrides: str):
    with initialize_config_dir(str(CONF), version_base=None):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("search")
    search(_compose("search", *SEARCH), run)
    return run


def _cpu_target(run: Path) -> float:
    """Halfway through the default space's cpu range, in ms."""
    cfg = Arch.load(run / "arch.json").metadata["config"]
    lo, hi = get_table(space_from_config(cfg["search_space"]), load_profile("cpu"), progress=False).range_ms()
    return round((lo + hi) / 2, 1)


def test_deriving_for_the_searched_target_reproduces_the_search_export(searched, tmp_path):
    meta = derive_from_supernet(_compose("derive", f"supernet={searched}", *QUIET, "device=vpu", "latency=30ms",
                                         "log_devices=[vpu]"), tmp_path)
    assert meta["derivation"].startswith("train:")  # the default derivation, as the search's
    assert Arch.load(tmp_path / "arch.json").choices == Arch.load(searched / "arch.json").choices
    assert meta["supernet"]["run_dir"] == str(searched.resolve())
    assert meta["supernet"]["searched_for"] == {"device": "vpu", "latency": "30ms"}
    assert meta["supernet"]["recipe"]["dataset"]["name"] == "digits" and meta["supernet"]["epochs"] == 1


def test_a_device_the_supernet_was_not_searched_for_gets_its_own_table(searched, tmp_path):
    target = _cpu_target(searched)
    meta = derive_from_supernet(_compose("derive", f"supernet={searched}", *QUIET, "device=cpu",
                                         f"latency={target}ms", "log_devices=[gpu]", "derive.method=budgeted"),
                                tmp_path)
    assert meta["search"]["device"] == "cpu" and meta["search"]["target_ms"] == target
    assert set(meta["latency_ms"]) == {"cpu", "gpu"} and meta["meets_target"]
    assert 0.9 <= meta["budget_used"] <= 1.0  # the band [derive.min_fraction * T, T]
    assert meta["config"]["dataset"]["name"] == "digits"  # the supernet's, not the derive config's default
    again = derive_from_supernet(_compose("derive", f"supernet={searched}", *QUIET, "device=cpu",
                                          f"latency={target}ms", "log_devices=[gpu]", "derive.method=budgeted"),
                                 tmp_path)
    assert again == meta  # a finished derivation is reported, not derived again


def test_the_supernets_training_keys_come_from_its_checkpoint(searched):
    cfg = _compose("derive", f"supernet={searched}", "device=gpu", "latency=1ms", "train.lr=0.5")
    saved = Arch.load(searched / "arch.json").metadata["config"]
    merged = derivation_config(cfg, saved)
    assert all(merged[k] == saved[k] for k in SUPERNET_KEYS)
    assert merged.device.name == "gpu" and merged.latency == "1ms" and "supernet" not in merged
    with pytest.raises(ConfigError, match=r"train.lr=0.5 is invalid: the supernet in .+ was trained with "
                                          r"train.lr=0.002; a derivation keeps what trained it"):
        derive_from_supernet(cfg, searched.parent / "d-lr", given=["train.lr=0.5"])


def test_bad_input_is_one_clear_error(searched, tmp_path):
    gone = tmp_path / "gone"  # keep_checkpoint=false: the export is there, the supernet is not
    gone.mkdir()
    (gone / "arch.json").write_bytes((searched / "arch.json").read_bytes())
    cases = [
        ([f"supernet={tmp_path / 'nowhere'}"], ConfigError, "no finished search there (no arch.json)"),
        ([f"supernet={gone}"], ConfigError, "its checkpoint.pt is gone (keep_checkpoint=false)"),
        ([f"supernet={searched}", "device=vpu", "latency=0.01ms"], InfeasibleTarget, "below the space's minimum"),
    ]
    for i, (overrides, error, message) in enumerate(cases):
        with pytest.raises(error, match=re.escape(message)):
            derive_from_supernet(_compose("derive", *QUIET, *overrides), tmp_path / str(i))
    # on the command line: one line, exit 2; the override that would change the supernet is named
    r = subprocess.run([sys.executable, "-m", "nas.derive", *QUIET, f"supernet={searched}", "search_space=proxyless",
                        f"hydra.run.dir={tmp_path / 'cli'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert "search_space=proxyless is invalid: the supernet in" in errors[0] and "search_space=quadra" in errors[0]


def test_a_front_on_two_devices_from_one_supernet(searched, tmp_path):
    out = derive_from_supernet(_compose("derive", f"supernet={searched}", *QUIET, "front.devices=[vpu,cpu]",
                                        "front.targets=3", "derive.method=select", "derive.candidates=4",
                                        "log_devices=[vpu]"), tmp_path)
    table = pd.read_csv(tmp_path / FRONT_CSV)
    assert (tmp_path / FRONT_PNG).is_file() and len(out["front"]) == 6
    assert list(table.device) == ["vpu"] * 3 + ["cpu"] * 3
    for device, part in table.groupby("device"):
        targets = list(part.target_ms)
        assert targets == sorted(targets) and len(set(targets)) == 3  # a ladder, not one point
        lo, hi = get_table(space_from_config(Arch.load(searched / "arch.json").metadata["config"]["search_space"]),
                           load_profile(device), progress=False).range_ms()
        assert lo < targets[0] and targets[-1] < hi
    assert (table.latency_ms <= table.target_ms + 1e-9).all() and (table.budget_used >= 0.9).all()
    assert table.val_top1_supernet.between(0, 1).all() and table.derivation.str.startswith("select:").all()
    assert not (tmp_path / "arch.json").exists()
    again = derive_from_supernet(_compose("derive", f"supernet={searched}", *QUIET, "front.devices=[vpu,cpu]",
                                          "front.targets=3", "derive.method=select", "derive.candidates=4",
                                          "log_devices=[vpu]"), tmp_path)
    assert pd.DataFrame(again["front"]).equals(table)  # a finished front is reported, not derived again
    table.head(4).to_csv(tmp_path / FRONT_CSV, index=False)  # killed after 4 of its 6 points
    (tmp_path / FRONT_PNG).unlink()
    resumed = derive_from_supernet(_compose("derive", f"supernet={searched}", *QUIET, "front.devices=[vpu,cpu]",
                                            "front.targets=3", "derive.method=select", "derive.candidates=4",
                                            "log_devices=[vpu]"), tmp_path)
    assert len(resumed["front"]) == 6 and (tmp_path / FRONT_PNG).is_file()
    assert pd.read_csv(tmp_path / FRONT_CSV).equals(table)  # the 2 missing points derived again, the same


def test_a_ladder_spans_the_middle_of_uniform_draws():
    table = get_table(space_from_config(OmegaConf.to_container(_compose("search").search_space)), load_profile("vpu"),
                      progress=False)
    lo, hi = table.range_ms()
    ladder = ladder_ms(table, 6, seed=0)
    assert len(ladder) == 6 and ladder == sorted(ladder) and lo < ladder[0] < ladder[-1] < hi
    assert ladder == ladder_ms(table, 6, seed=0)


@pytest.mark.parametrize("method", ["select", "budgeted"])
def test_budgets_on_two_devices_are_both_met_and_the_binding_one_used(searched, tmp_path, method):
    cpu = _cpu_target(searched)
    meta = derive_from_supernet(_compose("derive", f"supernet={searched}", *QUIET, "device=vpu",
                                         f"latency=[vpu:30ms,cpu:{cpu}ms]", "log_devices=[gpu]",
                                         f"derive.method={method}", "derive.candidates=8"), tmp_path)
    budgets = meta["budgets"]
    assert list(budgets) == ["vpu", "cpu"] and budgets["cpu"]["target_ms"] == cpu
    assert all(b["ms"] <= b["target_ms"] + 1e-9 and b["ms"] == meta["latency_ms"][n]["ms"] for n, b in budgets.items())
    assert meta["meets_target"] and max(b["used"] for b in budgets.values()) == meta["budget_used"] >= 0.9
    assert "the joint band (vpu <= 30.000 ms, cpu <=" in meta["derivation"]
    assert set(meta["latency_ms"]) == {"vpu", "cpu", "gpu"}


def test_a_band_supernet_derived_elsewhere_recommends_the_reusable_recipe():
    from nas.derive import REUSABLE_SAMPLING, reuse_note
    saved = {"train": {"sampling": "band"}, "device": {"name": "vpu"}, "latency": "30ms"}
    assert reuse_note(saved, "vpu", "30ms") is None  # its own target
    note = reuse_note(saved, "cpu", "20ms")
    assert f"train.sampling={REUSABLE_SAMPLING}" in note and "vpu at 30ms" in note
    assert reuse_note({**saved, "train": {"sampling": "uniform"}}, "cpu", "20ms") is None
