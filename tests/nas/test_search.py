"""End-to-end searches on the built-in digits data (small, real, always available)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nas.config import ConfigError
from nas.loops import DistInfo, TrainingDiverged
from nas.search import BAND_POOL, LADDER_BANDS, build_state, prepare, sample_weight_path, search
from search_spaces.arch import Arch
from tests.helpers import scalar_tags

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FAST = ["dataset=digits", "train.epochs=2", "train.batch_size=64", "threads=1", "log_devices=[cpu,vpu,gpu]",
        "accelerator=cpu",  # bitwise resumes and gloo DDP: on a GPU machine auto would pick CUDA
        "results_csv=null", "derive.finalists=2"]  # the default train derivation, 2 finalists: seconds
ONE = ["train.warmup_epochs=0", "train.epochs=1", "log_devices=[vpu]"]


def _cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base=None):
        return compose("search", overrides=[*FAST, *overrides])


def _run_cli(run_dir: Path, *overrides, env=None, wait=True):
    cmd = [sys.executable, "-m", "nas.search", *FAST, *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_search_exports_an_architecture_within_target(tmp_path):
    summary = search(_cfg("device=vpu", "latency=12ms"), tmp_path)
    arch = Arch.load(tmp_path / "arch.json")
    meta = arch.metadata
    assert meta["latency_ms"]["vpu"]["ms"] <= 12.0 and meta["meets_target"]
    assert set(meta["latency_ms"]) == {"vpu", "cpu", "gpu"}
    assert "stand-in" in meta["latency_ms"]["vpu"]["provenance"]
    assert meta["search"]["target_ms"] == 12.0 and meta["config"]["seed"] == 0
    assert meta["deployment"]["input_shape"] == [3, 224, 224] and meta["deployment"]["macs"] > 0
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "probabilities.png").is_file()
    assert any((tmp_path / "tb").iterdir())
    assert summary["search"]["epochs"] == 3


def test_target_below_minimum_is_a_clear_error(tmp_path):
    r = _run_cli(tmp_path, "device=vpu", "latency=0.1ms")
    assert r.returncode != 0
    assert "below the space's minimum" in r.stderr
    assert not (tmp_path / "arch.json").exists()


@pytest.mark.parametrize("override,match", [("latency=30", "no unit"), ("latency=30min", "unit"),
                                            ("device=tpu", "Available options in 'device'")])
def test_bad_input_errors(tmp_path, override, match):
    r = _run_cli(tmp_path, override)
    assert r.returncode != 0
    assert match in r.stderr


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_architecture(tmp_path):
    ref = _run_cli(tmp_path / "ref", "device=vpu", "latency=12ms", "train.epochs=3")
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    proc = _run_cli(run, "device=vpu", "latency=12ms", "train.epochs=3", wait=False)
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "arch.json").exists(), "the run finished before it could be killed"
    again = _run_cli(run, "device=vpu", "latency=12ms", "train.epochs=3")
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (json.loads((d / "arch.json").read_text()) for d in (tmp_path / "ref", run))
    assert a["choices"] == b["choices"]
    assert a["metadata"]["probabilities"] == b["metadata"]["probabilities"]


def test_resume_with_other_config_is_refused(tmp_path):
    search(_cfg("device=vpu", "latency=12ms", "train.epochs=0", "derive.without_search=true"), tmp_path)
    with pytest.raises(Exception, match="different config"):
        search(_cfg("device=vpu", "latency=13ms", "train.epochs=0", "derive.without_search=true"), tmp_path)


def test_no_export_without_an_architecture_step(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs=0 is invalid for a search"):  # before any work
        search(_cfg("device=vpu", "latency=30ms", "train.epochs=0"), tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="no architecture step"):  # one epoch, fewer weight steps than arch.every
        search(_cfg(*ONE, "device=vpu", "latency=30ms", "arch.every=100000"), tmp_path)
    assert not (tmp_path / "arch.json").exists()


def test_training_free_naswot_search_is_deterministic_and_in_band(tmp_path):
    free = ["device=vpu", "latency=30ms", "train.warmup_epochs=0", "train.epochs=0", "derive.without_search=true",
            "derive.method=naswot", "derive.candidates=16", "log_devices=[vpu]"]
    a, b = (search(_cfg(*free), tmp_path / d) for d in ("a", "b"))
    assert a["search"]["epochs"] == 0 and a["search"]["arch_steps"] == 0
    assert 27.0 <= a["latency_ms"]["vpu"]["ms"] <= 30.0
    assert Arch.load(tmp_path / "a" / "arch.json").choices == Arch.load(tmp_path / "b" / "arch.json").choices
    best = max(a["candidates"], key=lambda c: c["naswot"])["choices"]
    assert best == list(Arch.load(tmp_path / "a" / "arch.json").choices)


@pytest.mark.parametrize("method", ["select", "train", "naswot", "budgeted"])
def test_export_uses_the_budget_and_adds_a_results_row(tmp_path, method):
    csv = tmp_path / "search_results.csv"
    meta = search(_cfg(*ONE, "device=vpu", "latency=30ms", f"derive.method={method}", "derive.candidates=4",
                       "derive.eval_images=128", "derive.finalists=2", "derive.train_epochs=0.5",
                       f"results_csv={csv}"), tmp_path / "run")
    assert 0.9 <= meta["budget_used"] <= 1.0 and meta["meets_target"]
    assert 27.0 <= meta["latency_ms"]["vpu"]["ms"] <= 30.0
    if method == "select":
        cands = meta["candidates"]
        assert len(cands) >= 3 and meta["derivation"].startswith("select")
        # finalists (default 8) were scored again on the whole held-out split; the export is their best
        finalists = [c for c in cands if c.get("finalist", True)]
        assert len(finalists) == 2 and all(c["images"] > 128 for c in finalists)
        assert all(c["images"] == 128 for c in cands if not c.get("finalist", True))
        best = max(c["val_top1"] for c in finalists)
        assert any(c["choices"] == list(Arch.load(tmp_path / "run" / "arch.json").choices)
                   and c["val_top1"] == best for c in finalists)
    if method == "train":  # the 2 best by supernet weights trained standalone, the best of them exported
        cands = meta["candidates"]
        assert len(cands) >= 3 and meta["derivation"].startswith("train")
        trained = [c for c in cands if c.get("finalist", True)]
        assert len(trained) == 2 and all("supernet_top1" in c and c["images"] > 128 for c in trained)
        assert min(c["supernet_top1"] for c in trained) >= max(c["val_top1"] for c in cands if c not in trained)
        best = max(trained, key=lambda c: c["val_top1"])
        assert best["choices"] == list(Arch.load(tmp_path / "run" / "arch.json").choices)
        assert all(0.0 < c["val_top1"] <= 1.0 for c in trained)
    # the derivation's time (minutes with train) counts in the search's wall time
    assert 0.0 < meta["search"]["derive_s"] <= meta["search"]["wall_s"]
    if method == "naswot":  # every candidate scored on one batch, the best exported
        cands = meta["candidates"]
        assert len(cands) >= 3 and meta["derivation"].startswith("naswot")
        assert all(27.0 <= c["ms"] <= 30.0 and c["images"] == 64 for c in cands)
        best = max(cands, key=lambda c: c["naswot"])
        assert best["choices"] == list(Arch.load(tmp_path / "run" / "arch.json").choices)
        assert len({c["naswot"] for c in cands}) > 1
    rows = pd.read_csv(csv)
    assert len(rows) == 1 and rows.device[0] == "vpu" and rows.target_ms[0] == 30.0
    tags = scalar_tags(tmp_path / "run" / "tb")
    assert {"train/loss", "train/acc", "val/top1_argmax", "arch/entropy", "arch/loss", "latency/E_vpu_ms",
            "latency/argmax_ms", "train/loss_step", "arch/loss_step", "hparam/val_top1_supernet",
            "hparam/budget_used"} <= tags
    assert not any("[" in t for t in tags)
    assert {"vpu_ms", "budget_used", "derivation", "val_top1_supernet", "deploy_params", "deploy_macs", "seed",
            "wall_s", "run_dir"} <= set(rows.columns)


def test_band_sampling_trains_only_architectures_in_the_band(tmp_path):
    cfg = _cfg(*ONE, "device=vpu", "latency=30ms", "train.sampling=band", "derive.candidates=4",
               "derive.eval_images=128")
    setup = prepare(cfg, DistInfo())
    st = build_state(cfg, setup)
    pool = st.band_pool
    assert len(pool) == BAND_POOL and len(set(pool)) == len(pool)
    ms = [setup.table.arch_ms(setup.space.arch(a)) for a in pool]
    assert 27.0 <= min(ms) and max(ms) <= 30.0
    assert len({sum(c != "identity" for c in a) for a in pool}) >= 3  # the band's choices, not one corner
    drawn = set()
    for _ in range(50):
        sample_weight_path(cfg, st)
        drawn.add(tuple(m.names[m.sample.active] for m in st.model.mixed_ops()))
    assert drawn <= set(pool) and len(drawn) > 40
    meta = search(cfg, tmp_path)
    assert meta["search"]["sampling"] == "band" and 0.9 <= meta["budget_used"] <= 1.0


@pytest.mark.parametrize("sampling", ["ladder", "sandwich"])
def test_reusable_supernet_samplings_train_many_bands_and_search_end_to_end(tmp_path, sampling):
    from nas.derivations import ladder_ms
    cfg = _cfg(*ONE, "device=vpu", "latency=30ms", f"train.sampling={sampling}", "derive.method=select",
               "derive.candidates=4", "derive.eval_images=128")
    setup = prepare(cfg, DistInfo())
    st = build_state(cfg, setup)
    if sampling == "ladder":  # an equal share of the pool in each band of a ladder of targets
        ladder = ladder_ms(setup.table, LADDER_BANDS, 0)
        ms = [setup.table.arch_ms(setup.space.arch(a)) for a in st.band_pool]
        hit = {t for t in ladder for m in ms if 0.9 * t <= m <= t}
        assert len(hit) == LADDER_BANDS and min(ms) < 0.5 * max(ms)
    else:  # the largest, the smallest, then two uniform draws
        assert st.band_pool is None
        picked = []
        for step in range(4):
            st.step = step
            sample_weight_path(cfg, st)
            picked.append(tuple(m.names[m.sample.active] for m in st.model.mixed_ops()))
        assert picked[0] == setup.train_space.largest_arch().choices
        assert picked[1] == setup.train_space.smallest_arch().choices
        st.step = 0
    meta = search(cfg, tmp_path)
    assert meta["search"]["sampling"] == sampling and 0.9 <= meta["budget_used"] <= 1.0


def test_band_sampling_falls_back_to_uniform_when_the_band_is_empty(tmp_path, caplog):
    cfg = _cfg(*ONE, "device=vpu", "latency=30ms", "train.sampling=band", "derive.min_fraction=0.999999")
    setup = prepare(cfg, DistInfo())
    setup.target_ms = setup.table.range_ms()[0] * 0.9999  # nothing fits [0.999999 T, T]
    st = build_state(cfg, setup)
    assert st.band_pool is None and "draw uniformly per layer instead" in caplog.text
    sample_weight_path(cfg, st)
    assert all(m.sample.gates is None for m in st.model.mixed_ops())


def test_a_measured_tables_sum_is_exported_and_logged_with_its_whole_network(tmp_path, caplog):
    with caplog.at_level("INFO", logger="nas.search"):
        meta = search(_cfg(*ONE, "device=vpu", "latency=30ms", "log_devices=[vpu,host]"), tmp_path)
    host, vpu = meta["latency_ms"]["host"], meta["latency_ms"]["vpu"]
    assert host["provenance"] == "measured" and host["whole_net_ms"] > 0 and "whole_net_ms" not in vpu
    assert host["table_error_pct"] == pytest.approx(100 * (host["ms"] - host["whole_net_ms"]) / host["whole_net_ms"])
    assert f"(whole network {host['whole_net_ms']:.3f} ms; table {host['table_error_pct']:+.1f}%)" in caplog.text


def test_a_search_under_budgets_on_two_devices_exports_a_network_meeting_both(tmp_path, caplog):
    from latency.lut import get_table
    from latency.profiles import load_profile
    from search_spaces.spaces import space_from_config
    cfg = _cfg(*ONE, "device=vpu", "latency=30ms")
    lo, hi = get_table(space_from_config(OmegaConf.to_container(cfg.search_space)), load_profile("gpu"),
                       progress=False).range_ms()
    gpu = round(lo + 0.3 * (hi - lo), 2)  # tighter than vpu 30 ms for most of the band
    with caplog.at_level("INFO", logger="nas.search"):
        meta = search(_cfg(*ONE, "device=vpu", f"latency=[vpu:30ms,gpu:{gpu}ms]"), tmp_path)
    assert meta["meets_target"] and set(meta["budgets"]) == {"vpu", "gpu"} and meta["budget_used"] >= 0.9
    assert meta["latency_ms"]["gpu"]["ms"] <= gpu and meta["latency_ms"]["vpu"]["ms"] <= 30.0
    assert f"vpu target 30.000 ms, gpu {gpu:.3f} ms ==" in caplog.text
    from nas.checkpoint import load_checkpoint
    loss = load_checkpoint(tmp_path / "checkpoint.pt", kind="supernet")["loss"]
    assert set(loss) == {"terms.0.weight", "terms.1.weight"}  # a latency term with a multiplier per budget
    with pytest.raises(ConfigError, match="has no budget on device=vpu"):
        search(_cfg(*ONE, "device=vpu", "latency=[gpu:1ms]"), tmp_path / "b")
    with pytest.raises(ConfigError, match="latency: unknown device 'tpu'"):
        search(_cfg(*ONE, "device=vpu", "latency=[vpu:30ms,tpu:1ms]"), tmp_path / "c")


def test_a_finished_search_is_not_rewritten_and_threads_may_change(tmp_path):
    search(_cfg(*ONE, "device=vpu", "latency=20ms"), tmp_path)
    before = (tmp_path / "arch.json").stat().st_mtime_ns
    again = search(_cfg(*ONE, "device=vpu", "latency=20ms", "threads=2"), tmp_path)
    assert (tmp_path / "arch.json").stat().st_mtime_ns == before
    assert again["search"]["target_ms"] == 20.0


def test_keep_checkpoint_false_deletes_the_supernet_after_export(tmp_path):
    search(_cfg(*ONE, "device=vpu", "latency=20ms", "keep_checkpoint=false"), tmp_path)
    assert (tmp_path / "arch.json").is_file() and not (tmp_path / "checkpoint.pt").exists()
    before = (tmp_path / "arch.json").stat().st_mtime_ns
    search(_cfg(*ONE, "device=vpu", "latency=20ms"), tmp_path)  # finished: nothing retrained or rewritten
    assert (tmp_path / "arch.json").stat().st_mtime_ns == before and not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(Exception, match="differs in: latency"):
        search(_cfg(*ONE, "device=vpu", "latency=25ms"), tmp_path)


def test_a_trained_supernet_can_be_derived_again_another_way(tmp_path):
    first = search(_cfg(*ONE, "device=vpu", "latency=30ms", "derive.method=select", "derive.candidates=4",
                        "derive.eval_images=128"), tmp_path / "a")
    (tmp_path / "b").mkdir()
    os.link(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")
    again = search(_cfg(*ONE, "device=vpu", "latency=30ms", "derive.method=budgeted"), tmp_path / "b")
    assert again["derivation"].startswith("most likely") and not again["candidates"]
    assert again["search"]["arch_steps"] == first["search"]["arch_steps"]  # no training step was added
    assert again["probabilities"] == first["probabilities"]


def test_diverging_search_stops_without_export(tmp_path):
    with pytest.raises(TrainingDiverged, match="nothing is exported"):
        search(_cfg(*ONE, "device=vpu", "latency=30ms", "train.lr=1e6", "train.grad_clip=1e9",
                    "train.optimizer=sgd"), tmp_path)
    assert not (tmp_path / "arch.json").exists()


@pytest.mark.slow
def test_two_process_ddp_exports_the_same_architecture(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "nas.search", *FAST, "device=vpu", "latency=12ms", f"hydra.run.dir={tmp_path}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "arch.json").read_text())["metadata"]
    assert meta["search"]["world_size"] == 2 and meta["ranks_agree"] is True


@pytest.mark.slow
def test_sweep_folders_name_what_changed_without_brackets(tmp_path):
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "nas.search", "-m", *FAST, *ONE, "train.batch_size=128",
                        "search_space.kernels=[3,5]", "latency=20ms,30ms", f"hydra.sweep.dir={sweep}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # threads, log_devices and results_csv change nothing found, so they are left out of the names
    assert len(names) == 2 and all("search_space.kernels=3-5," in n for n in names), names
    assert ["latency=20ms" in names[0], "latency=30ms" in names[1]] == [True, True]
    assert not any(c in n for n in names for c in "[]/ ") and not any(k in n for n in names
                                                                     for k in ("threads", "log_devices", "results_csv"))
    for name in names:
        assert Arch.load(sweep / name / "arch.json").metadata["config"]["search_space"]["kernels"] == [3, 5]


def test_every_derive_method_is_registered_once_in_the_order_of_the_config():
    from nas.config import DERIVE_METHODS
    from nas.derivations import METHODS
    assert tuple(METHODS) == DERIVE_METHODS


def test_finalists_trained_side_by_side_score_as_one_after_another():
    from nas.derivations import _finalist_scores, finalist_jobs
    cfg = _cfg("device=vpu", "latency=30ms", "derive.train_epochs=0.5", "derive.jobs=2")
    setup = prepare(cfg, DistInfo())
    n = len(setup.train_space.layers())
    top = [{"choices": [op] + ["identity"] * (n - 1)} for op in ("quadra_k3_e2", "quadra_k5_e4", "quadra_k7_e2")]
    assert finalist_jobs(cfg, setup, len(top)) == 2
    parallel = _finalist_scores(cfg, setup, top)  # two forked 1-thread processes
    cfg.derive.jobs = 1
    assert finalist_jobs(cfg, setup, len(top)) == 1
    assert _finalist_scores(cfg, setup, top) == parallel  # threads=1 here: bit for bit the same scores
    cfg.threads, cfg.derive.jobs = None, "auto"
    assert finalist_jobs(cfg, setup, 1) == 1 and finalist_jobs(cfg, setup, 64) == len(os.sched_getaffinity(0))


def test_standalone_training_of_a_finalist_learns_and_is_repeatable():
    from nas.derivations import train_standalone
    cfg = _cfg("device=vpu", "latency=30ms", "derive.train_epochs=3")
    setup = prepare(cfg, DistInfo())
    arch = setup.train_space.arch(["quadra_k3_e2"] + ["identity"] * (len(setup.train_space.layers()) - 1))
    first, again = train_standalone(cfg, setup, arch), train_standalone(cfg, setup, arch)
    assert first == again  # same seed, same batches: finalists differ by architecture only
    assert first > 0.5  # 10 digit classes: chance is 0.1
