"""Config schemas (nas/config.py): every real config passes, every bad value ends in one line naming its key."""

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nas.config import (
    GROUP_SCHEMAS,
    SCHEMAS,
    USAGE_EXIT,
    VARIANTS,
    CheckConfig,
    ConfigError,
    check_config,
    check_results_csv,
)
from nas.report import append_results_row
from nas.search import search

ROOT = Path(__file__).resolve().parents[2]
GROUPS = {"search": ("device", "search_space", "dataset", "loss"), "derive": ("device",), "retrain": ("dataset",),
          "train": ("dataset",), "evaluate": ("dataset",)}
NEEDS = {"search": [], "derive": ["supernet=run"], "retrain": ["model=quadranet25_xxs"],
         "train": ["model=quadranet25_xxs"],
         "evaluate": ["checkpoint=run/checkpoint.pt"]}  # what each entry point needs besides its defaults


def _options(group: str) -> list[str]:
    return sorted(p.name[:-len(".yaml")] for p in (resources.files("conf") / group).iterdir()
                  if p.name.endswith(".yaml"))


def _compose(entry: str, *overrides: str):
    with initialize_config_module(config_module="conf", version_base=None):
        return compose(entry, overrides=[*NEEDS[entry], *overrides])


def _structured(cfg, entry: str):
    """The entry's schema as an OmegaConf structured config, each group at the variant its option picks."""
    schema = OmegaConf.structured(SCHEMAS[entry])
    for group, base in GROUP_SCHEMAS.items():
        if group in schema.keys() and cfg.get(group) is not None:
            selector, options = VARIANTS.get(base, ("", {}))
            schema[group] = OmegaConf.structured(options.get(cfg[group].get(selector), base))
    return schema


@pytest.mark.parametrize("entry,group,option", [(e, g, o) for e, groups in GROUPS.items() for g in groups
                                                for o in _options(g)])
def test_every_real_config_passes_its_schema(entry, group, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default results_csv (and the supernet=run folder) resolve here
    (tmp_path / "run").mkdir()
    for name in ("arch.json", "checkpoint.pt"):  # what nas.derive's check asks of a finished search's folder
        (tmp_path / "run" / name).touch()
    root = [f"dataset.root={tmp_path}"] if group == "dataset" and option in ("cifar10", "imagefolder") else []
    cfg = _compose(entry, f"{group}={option}", *root)
    before = OmegaConf.to_container(cfg)
    check_config(cfg, entry)
    assert OmegaConf.to_container(cfg) == before  # checked, never rewritten: checkpoints compare as before
    OmegaConf.merge(_structured(cfg, entry), cfg)  # the dataclasses are valid structured configs of these files


def test_evaluate_default_has_no_dataset_and_an_old_search_config_without_finalists_passes():
    check_config(_compose("evaluate"), "evaluate")
    check_config(_compose("search", "~derive.finalists"), "search")  # a key older configs lack, with a default


@pytest.mark.parametrize("entry", sorted(SCHEMAS))
def test_schemas_are_registered_and_mirror_the_yaml_keys(entry):
    assert f"{entry}_schema.yaml" in ConfigStore.instance().repo
    for group in GROUP_SCHEMAS:
        assert f"{group}_schema.yaml" in ConfigStore.instance().repo
    with initialize_config_module(config_module="conf", version_base=None):
        schema = compose(f"{entry}_schema")
    real = _compose(entry)
    assert set(schema) - {"dataset"} == set(real) - {"dataset"}
    for section in ("train", "arch", "derive", "eval"):
        if section in real and OmegaConf.is_dict(real[section]):
            assert set(schema[section]) == set(real[section]), section


COMMON = ["dataset=digits", "threads=1"]
BAD = [  # entry, overrides, the one line expected
    ("search", ["train.epochs=abc"], "train.epochs=abc is invalid; valid: an integer >= 0"),
    ("search", ["train.batch_size=0"], "train.batch_size=0 is invalid; valid: an integer >= 1"),
    ("search", ["train.epochs=-1"], "train.epochs=-1 is invalid; valid: an integer >= 0"),
    ("search", ["train.warmup_epochs=0", "train.epochs=0"],
     "train.epochs=0 is invalid for a search; valid: an integer >= 1"),
    ("search", ["train.epochs=3.5"], "train.epochs=3.5 is invalid; valid: an integer >= 0"),
    ("search", ["mode=bogus"], "mode=bogus is invalid; valid: two, full_v2, full"),
    ("search", ["loss.kind=bogus"], "loss.kind=bogus is invalid; valid: mul_log, add_linear, constraint, none"),
    ("search", ["loss.kind=add_linear"],
     "loss.weight_init is not an option for loss.kind=add_linear; valid: kind, lam"),
    ("search", ["loss=mul_log", "loss.a=0"], "loss.a=0 is invalid for loss.kind=mul_log; valid: a number > 0"),
    ("search", ["train.optimizer=rmsprop"], "train.optimizer=rmsprop is invalid; valid: adamw, sgd"),
    ("search", ["arch.optimizer=rmsprop"], "arch.optimizer=rmsprop is invalid; valid: adam, sgd"),
    ("search", ["arch.lr=-1"], "arch.lr=-1 is invalid; valid: a number in (0, 3.40282e+38]"),
    ("search", ["train.lr=0"], "train.lr=0 is invalid; valid: a number in (0, 3.40282e+38]"),
    ("search", ["dataset=imagefolder"], "dataset.root is required for dataset.name=imagefolder; valid: the dataset's"),
    ("search", ["dataset=cifar10"], "dataset.root is required for dataset.name=cifar10; valid: the dataset's"),
    ("search", ["dataset=cifar10", "dataset.root=null"], "dataset.root=null is invalid for dataset.name=cifar10"),
    ("search", ["train.sampling=fair"], "train.sampling=fair is invalid; valid: proxyless, uniform, band"),
    ("search", ["derive.method=best"], "derive.method=best is invalid; valid: select, train, naswot, budgeted, argmax"),
    ("search", ["derive.min_fraction=1.5"], "derive.min_fraction=1.5 is invalid; valid: a number in [0, 1]"),
    ("search", ["derive.min_fraction=-0.1"], "derive.min_fraction=-0.1 is invalid; valid: a number in [0, 1]"),
    ("search", ["derive.finalists=-1"], "derive.finalists=-1 is invalid; valid: an integer in [0, 1024]"),
    ("search", ["derive.train_epochs=0"], "derive.train_epochs=0 is invalid; valid: a number > 0"),
    ("search", ["derive.jobs=0"], "derive.jobs=0 is invalid; valid: auto or an integer >= 1"),
    ("search", ["derive.jobs=many"], "derive.jobs=many is invalid; valid: auto or an integer >= 1"),
    ("search", ["derive.method=train", "derive.finalists=0"],
     "derive.finalists=0 is invalid for derive.method=train; valid: an integer >= 1"),
    ("search", ["derive.without_search=yes"], "derive.without_search=yes is invalid; valid: true or false"),
    ("search", ["train.val_fraction=1"], "train.val_fraction=1 is invalid; valid: a number in (0, 1)"),
    ("search", ["log_devices=[vpu,tpu]"], "log_devices[1]=tpu is invalid; valid: cpu, cuda, gpu, host, vpu"),
    ("search", ["threads=0"], "threads=0 is invalid; valid: null (all cores) or an integer in [1, "),
    ("search", ["seed='3'"], "seed='3' is invalid; valid: an integer"),
    ("search", ["latency=30"], "latency 30 has no unit"),
    ("search", ["+train.foo=1"], "train.foo is not an option; valid: batch_size, "),
    ("search", ["search_space=proxyless", "search_space.strides=[2,0]"],
     "search_space.strides[1]=0 is invalid for search_space.name=proxyless; valid: an integer >= 1"),
    ("search", ["device.input_shape=[3,224,224]"],
     "device.input_shape=[3, 224, 224] is invalid; valid: a list of 4 integers >= 1"),
    ("retrain", ["train.epochs=abc"], "train.epochs=abc is invalid; valid: an integer >= 0"),
    ("retrain", ["train.batch_size=0"], "train.batch_size=0 is invalid; valid: an integer >= 1"),
    ("retrain", ["train.epochs=-1"], "train.epochs=-1 is invalid; valid: an integer >= 0"),
    ("retrain", ["train.lr=0"], "train.lr=0 is invalid; valid: a number in (0, 3.40282e+38]"),
    ("retrain", ["train.ema_decay=1"], "train.ema_decay=1 is invalid; valid: a number in (0, 1) or null"),
    ("retrain", ["dataset=imagefolder"], "dataset.root is required for dataset.name=imagefolder"),
    ("retrain", ["model=bogus"], "model=bogus is invalid; valid: quadranet25_xxs, "),
    ("retrain", ["model=null"], "pass exactly one of arch=PATH/arch.json or model=NAME"),
    ("retrain", ["model=null", "arch=missing/arch.json"],
     "arch=missing/arch.json is invalid: no such file; valid: PATH/arch.json"),
    ("retrain", ["init=missing.pt"], "init=missing.pt is invalid: no such file; valid: scratch, supernet or PATH/"),
    ("train", ["first_order=1"], "first_order=1 is invalid; valid: true or false"),
    ("train", ["eval.profiles=[tpu]"], "eval.profiles[0]=tpu is invalid; valid: cpu, cuda, gpu, host, vpu"),
    ("evaluate", ["checkpoint=null"], "checkpoint is required; valid: PATH/checkpoint.pt"),
    ("evaluate", ["eval.latency_repeats=0"], "eval.latency_repeats=0 is invalid; valid: an integer >= 1"),
]


@pytest.mark.parametrize("entry,overrides,message", BAD, ids=[" ".join(o) for _, o, _ in BAD])
def test_bad_value_is_one_line_naming_the_key(entry, overrides, message):
    cfg = _compose(entry, *COMMON, "results_csv=null", *overrides)
    with pytest.raises(ConfigError) as e:
        check_config(cfg, entry)
    text = str(e.value)
    assert text.startswith(message) and "\n" not in text
    assert any(w in text for w in ("valid: ", "pass exactly one", "write it like"))


def test_a_search_may_skip_searching_only_when_asked():
    check_config(_compose("search", "train.epochs=0", "derive.without_search=true"), "search")


def test_results_csv_is_checked_at_the_start(tmp_path):
    check_results_csv(None)
    check_results_csv(str(tmp_path / "new" / "results.csv"))  # created later, with its folder
    good = append_results_row(tmp_path / "good.csv", {"run_dir": "a", "top1": 0.5})
    check_results_csv(str(good))
    (tmp_path / "empty.csv").touch()
    check_results_csv(str(tmp_path / "empty.csv"))
    with pytest.raises(ConfigError, match=r"^results_csv=.* is a folder; valid: a CSV file path"):
        check_results_csv(str(tmp_path))
    bad = tmp_path / "bad.csv"
    bad.write_text("run_dir,top1\na,0.5\nb,0.6,extra,fields\n")
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(bad)  # what appending a row after training would have hit
    with pytest.raises(ConfigError, match=r"^results_csv=.*bad.csv is not a CSV table \(line 3 has 4 fields"):
        check_results_csv(str(bad))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="is not a CSV table"):
        check_results_csv(str(binary))
    with pytest.raises(ConfigError, match=r"good.csv is not a folder"):
        check_results_csv(str(good / "results.csv"))


def test_search_checks_before_any_work(tmp_path):
    cfg = _compose("search", *COMMON, f"results_csv={tmp_path}")
    with pytest.raises(ConfigError, match=r"^results_csv=.* is a folder"):
        search(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_search_batch_larger_than_the_data_is_one_line(tmp_path):
    """Checked after the data loads (its size is known only then), still before any training step."""
    cfg = _compose("search", *COMMON, "results_csv=null", "log_devices=[vpu]", "train.batch_size=100000")
    with pytest.raises(ValueError, match=r"^train.batch_size=100000 is larger than the training split") as e:
        search(cfg, tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "arch.json").exists()


def test_callback_exits_before_the_run_folder_with_one_line(capsys):
    config = _compose("search", *COMMON, "mode=bogus")
    with pytest.raises(SystemExit) as e:
        CheckConfig("search").on_run_start(config=config, config_name="search")
    assert e.value.code == USAGE_EXIT
    assert capsys.readouterr().err == "error: mode=bogus is invalid; valid: two, full_v2, full\n"
    CheckConfig("search").on_run_start(config=_compose("search", *COMMON))  # a good config passes


CLI = [  # module, overrides, stderr
    ("nas.search", ["train.epochs=abc"], "error: train.epochs=abc is invalid; valid: an integer >= 0\n"),
    ("nas.retrain", ["model=quadranet25_xxs", "train.batch_size=0"],
     "error: train.batch_size=0 is invalid; valid: an integer >= 1\n"),
    ("nas.search", ["results_csv=RUN"],
     "error: results_csv=RUN is a folder; valid: a CSV file path (created if absent) or null\n"),
]


@pytest.mark.parametrize("module,overrides,stderr", CLI, ids=[m + " " + " ".join(o) for m, o, _ in CLI])
def test_cli_ends_in_one_line_without_a_run_folder(module, overrides, stderr, tmp_path):
    run = tmp_path / "run"
    overrides = [o.replace("RUN", str(tmp_path)) for o in overrides]
    r = subprocess.run([sys.executable, "-m", module, *COMMON, *overrides, f"hydra.run.dir={run}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == USAGE_EXIT
    assert r.stderr == stderr.replace("RUN", str(tmp_path)) and r.stdout == ""
    assert not run.exists() and not (tmp_path / "arch.json").exists()
