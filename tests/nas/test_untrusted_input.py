"""Files a user did not write: arch.json values, foreign CSVs, run folders in use, faults mid-run.

Every case ends with a non-zero exit and one ``error:`` line naming the key or file, no traceback,
and nothing already written lost or altered.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nas.retrain import with_recorded_dataset
from search_spaces.arch import Arch, ArchError
from search_spaces.spaces import get_space

ROOT = Path(__file__).resolve().parents[2]


def _cli(module: str, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_error_line(r) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-2000:]
    return errors[0]


def _digits_arch(metadata: dict | None = None) -> Arch:
    arch = get_space("quadra").with_input((1, 16, 16), 10, 2).random_arch(2)
    return Arch(arch.space, arch.macro, arch.choices, metadata or {})


# -- values taken from an arch file -----------------------------------------------------------------
def test_recorded_dataset_cannot_walk_out_of_the_config_tree(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: cifar10\nroot: /nonexistent\n")
    _digits_arch({"search": {"dataset": f"../../../../../../..{tmp_path}/evil"}}).save(tmp_path / "arch.json")
    with pytest.raises(ArchError, match=r"records dataset '.*evil', which is not a dataset; valid: fashion_mnist"):
        with_recorded_dataset([f"arch={tmp_path / 'arch.json'}"])
    r = _cli("nas.retrain", f"arch={tmp_path / 'arch.json'}", "threads=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert "which is not a dataset" in _one_error_line(r)
    assert not (tmp_path / "run").exists()  # refused before Hydra made a folder


def test_recorded_dataset_joins_the_command_line_unless_one_is_given(tmp_path):
    _digits_arch({"search": {"dataset": "digits"}}).save(tmp_path / "arch.json")
    arg = f"arch={tmp_path / 'arch.json'}"
    args, note = with_recorded_dataset([arg, "seed=1"])
    assert args == [arg, "seed=1", "dataset=digits"] and "as recorded in" in note
    assert with_recorded_dataset([arg, "dataset=cifar10"]) == ([arg, "dataset=cifar10"], None)


def test_a_broken_arch_file_fails_before_any_run_folder(tmp_path):
    (tmp_path / "arch.json").write_text('{"space": "quadra"}')
    r = _cli("nas.retrain", f"arch={tmp_path / 'arch.json'}", "dataset=digits", "threads=1",
             f"hydra.run.dir={tmp_path / 'run'}")
    assert "arch.json: format: unknown version None; valid:" in _one_error_line(r)
    assert not (tmp_path / "run").exists()


# -- one writer per run folder ---------------------------------------------------------------------
HOLDER = "import sys, time; from nas.runlock import hold; hold(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir`` (as a running search would)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_of_a_run_folder_is_refused_before_writing(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        r = _cli("nas.search", "dataset=digits", "threads=1", "results_csv=null", f"hydra.run.dir={run}")
        assert "is in use by another process" in _one_error_line(r)
        assert sorted(p.name for p in run.iterdir()) == [".run.lock"]  # no .hydra/, no log, no checkpoint
        from nas.runlock import RunFolderBusy, run_folder
        with pytest.raises(RunFolderBusy, match="pass another hydra.run.dir"), run_folder(run):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    from nas.runlock import run_folder
    holder = _holder(tmp_path / "run")
    holder.kill()  # SIGKILL: no clean-up ran
    holder.wait()
    with run_folder(tmp_path / "run"):  # a resume is not blocked
        pass


# -- results rows ------------------------------------------------------------------------------------
def _search_cfg(*overrides):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return compose("search", overrides=["dataset=digits", "dataset.limit=512", "train.warmup_epochs=0",
                                            "train.epochs=1", "train.batch_size=64", "threads=1", "log_devices=[vpu]",
                                            "device=vpu", "latency=12ms", "derive.method=select", "derive.candidates=4",
                                            "derive.finalists=0", *overrides])


@pytest.mark.slow
def test_a_search_killed_before_its_row_gets_it_on_rerun(tmp_path):
    from nas.search import search
    run, csv = tmp_path / "run", tmp_path / "results.csv"
    search(_search_cfg("results_csv=null"), run)  # arch.json written, no row: as if killed just after it
    search(_search_cfg(f"results_csv={csv}"), run)  # the rerun of the finished search adds the row
    text = csv.read_text()
    rows = pd.read_csv(csv)
    assert len(rows) == 1 and rows.run_dir[0] == str(run.resolve()) and rows.device[0] == "vpu"
    search(_search_cfg(f"results_csv={csv}"), run)  # and only once
    assert csv.read_text() == text


def test_a_foreign_csv_is_refused_and_left_as_it_is(tmp_path):
    from nas.config import ConfigError, check_results_csv
    from nas.report import append_results_row
    foreign, text = tmp_path / "o.csv", tmp_path / "notes.txt"
    foreign.write_text("name,score\nx,1\n")
    text.write_text("my notes, not a table\nsecond line\n")
    for path in (foreign, text):
        before = path.read_bytes()
        with pytest.raises(ConfigError, match=r"is not a QuadraNAS results CSV .*it is left as it is"):
            check_results_csv(str(path))
        with pytest.raises(ValueError, match="is not a QuadraNAS results CSV"):
            append_results_row(path, {"run_dir": "a", "top1": 0.5})
        assert path.read_bytes() == before
    r = _cli("nas.retrain", "model=quadranet25_xxs", "dataset=digits", f"results_csv={foreign}",
             f"hydra.run.dir={tmp_path / 'run'}")
    assert "results_csv=" in _one_error_line(r) and not (tmp_path / "run").exists()


def test_rows_already_written_keep_their_text(tmp_path):
    from nas.report import append_results_row
    csv = tmp_path / "results.csv"
    append_results_row(csv, {"run_dir": "a", "epochs": 2, "top1": 0.5, "host_ms": None})
    append_results_row(csv, {"run_dir": "b", "epochs": 3, "top1": 0.25, "extra": "x"})  # a new column
    append_results_row(csv, {"run_dir": "b", "epochs": 4, "top1": 0.75})  # replaces b's row
    assert csv.read_text().splitlines() == ["run_dir,epochs,top1,host_ms,extra", "a,2,0.5,,", "b,4,0.75,,"]
    # the lock stays as one hidden empty file: unlinking a flock file on release could hand two writers the lock
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.csv.lock", "results.csv"]


# -- one line instead of a traceback -------------------------------------------------------------------
def _retrain_cfg(*overrides):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return compose("retrain", overrides=["dataset=digits", "dataset.limit=256", "threads=1", "results_csv=null",
                                             "train.batch_size=64", "eval.profiles=[]", "eval.host_latency=false",
                                             "eval.onnx=false", "eval.every_epoch=false", *overrides])


@pytest.mark.parametrize("override,match", [
    ("train.lr=1e39", r"^train.lr=1e\+39 is invalid; valid: a number in \(0, 3.40282e\+38\]$"),
    ("threads=100000", r"^threads=100000 is invalid; valid: null \(all cores\) or an integer in \[1, \d+\]"),
    ("seed=-1", r"^seed=-1 is invalid; valid: an integer in \[0, 4.29497e\+09\]$"),
    ("seed=123456789012345678901", r"^seed=123456789012345678901 is invalid; valid: an integer in \[0,"),
    ("derive.candidates=100000000000", r"^derive.candidates=100000000000 is invalid; valid: an integer in \[1, 1024\]"),
])
def test_out_of_range_values_name_the_key_and_the_valid_range(override, match):
    from nas.config import ConfigError, check_config
    with pytest.raises(ConfigError, match=match):
        check_config(_search_cfg(override), "search")


def test_a_write_the_system_refuses_is_one_line_and_loses_nothing(tmp_path, monkeypatch, capsys):
    import errno

    import search_spaces.io
    from nas.cli import run_cli
    from nas.trainer import train
    run = tmp_path / "run"
    _digits_arch().save(tmp_path / "arch.json")
    cfg = _retrain_cfg(f"arch={tmp_path / 'arch.json'}", "train.epochs=1")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(search_spaces.io.os, "fsync", full_disk)
    assert run_cli(lambda: train(cfg, run)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]  # not the bar
    assert err == [f"error: No space left on device ({run / 'checkpoint.pt'}); files already written are intact: "
                   "fix it and rerun in the same run folder to resume"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-written file left


def test_a_run_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    from filelock import FileLock

    from nas.runlock import RunFolderError, hold

    def refused(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".run.lock"))
    monkeypatch.setattr(FileLock, "acquire", refused)  # what a read-only folder does (root ignores chmod)
    with pytest.raises(RunFolderError, match=r"cannot be written \(Permission denied\); pass a writable"):
        hold(tmp_path / "ro")


def test_a_search_diverging_before_any_checkpoint_says_so(tmp_path):
    from nas.loops import TrainingDiverged
    from nas.search import search
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet and nothing is exported"):
        search(_search_cfg("results_csv=null", "train.lr=1e6", "train.grad_clip=1e9", "train.optimizer=sgd"),
               tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


# -- architecture files: what is valid, and where it runs -------------------------------------------------
def test_an_op_outside_the_space_is_priced_whole_and_trains(tmp_path):
    from latency.predict import predict_rows
    from nas.data import DataInfo
    from nas.job import resolve_job
    arch = get_space("quadra").random_arch(0)
    arch = Arch(arch.space, arch.macro, ("quadra_k9_e8",) + arch.choices[1:])  # the family builds it
    (row,) = predict_rows(arch, ["vpu"])
    assert row["table_ms"] is None and row["whole_net_ms"] > 0  # no table entry: the whole network is priced
    arch.save(tmp_path / "arch.json")
    job = resolve_job(_retrain_cfg(f"arch={tmp_path / 'arch.json'}"), DataInfo("digits", (1, 16, 16), 10, 1, 1))
    assert job.arch.choices[0] == "quadra_k9_e8"


def test_a_small_input_gets_a_small_stem_stride_or_a_clear_refusal(tmp_path):
    from nas.data import DataInfo
    from nas.job import check_runs, resolve_job
    space = get_space("quadra")
    assert space.with_input((1, 28, 28), 10).macro.stem_stride == 2  # the public API picks it by size
    assert space.with_input((3, 224, 224), 10).macro.stem_stride == 4
    big = get_space("quadra").with_input((1, 28, 28), 10, 4)  # a hand-made file keeping the 224-px stride
    big.arch(tuple("quadra_k7_e4" for _ in big.layers())).save(tmp_path / "arch.json")
    job = resolve_job(_retrain_cfg(f"arch={tmp_path / 'arch.json'}"), DataInfo("fashion_mnist", (1, 28, 28), 10, 1, 1))
    with pytest.raises(ArchError, match=r"does not run at input \[1, 28, 28\] with stem stride 4 .*use stem stride 2"):
        check_runs(job.arch, job.label)


@pytest.mark.parametrize("content,match", [
    (b"\x08\x07ONNX\xff\xfe binary", r"model.onnx is not an architecture JSON file: not UTF-8 text \(an ONNX model"),
    (b"\xff\xd8\xff garbage", r"model.onnx is not an architecture JSON file: not UTF-8 text"),
])
def test_predict_names_a_file_that_is_not_an_arch(tmp_path, content, match):
    from latency.predict import load_arch
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(ArchError, match=match):
        load_arch(str(tmp_path / "model.onnx"))


def test_predict_takes_a_model_name_and_names_the_choices_otherwise():
    from latency.predict import load_arch
    assert load_arch("quadranet25_xxs").macro.input_shape == (3, 224, 224)
    with pytest.raises(ArchError, match=r"arch=quadranet36_tt: no such file and not a registered model; valid: "
                                        r"PATH/arch.json or one of .*quadranet25_xxs"):
        load_arch("quadranet36_tt")


# -- leftovers -----------------------------------------------------------------------------------------
def test_a_run_start_removes_the_half_written_files_of_a_killed_run(tmp_path):
    from nas.runlock import run_folder
    from search_spaces.io import _host
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint.pt.{_host()}-{int(dead.stdout)}-0123abcd.tmp"  # its writer is gone
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".checkpoint.pt.{_host()}-{os.getppid()}-0123abcd.tmp"  # a live writer's: kept
    alive.write_bytes(b"in flight")
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_text("mine")
    with run_folder(tmp_path):
        assert not stale.exists() and alive.exists() and unrelated.exists()


def test_evaluate_on_a_supernet_says_what_to_do(tmp_path):
    from nas.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "checkpoint.pt", {"kind": "supernet", "config": {}})
    r = _cli("nas.evaluate", f"checkpoint={tmp_path / 'checkpoint.pt'}")
    assert _one_error_line(r).endswith(f"retrain its export first: python -m nas.retrain arch={tmp_path}/arch.json")


def test_the_printed_retrain_hint_runs_for_a_sweep_folder(tmp_path):
    from nas.cli import override_arg
    sweep = tmp_path / "dataset=digits,device=vpu,latency=25ms"  # what a multirun names its job folders
    _digits_arch({"search": {"dataset": "digits"}}).save(sweep / "arch.json")
    hint = f"{sys.executable} -m nas.retrain {override_arg('arch', sweep / 'arch.json')}"
    assert hint.endswith(f"\"arch='{sweep}/arch.json'\"")
    r = subprocess.run(f"{hint} train.epochs=0 dataset.limit=256 threads=1 results_csv=null eval.profiles=[] "
                       f"eval.host_latency=false eval.onnx=false hydra.run.dir={tmp_path / 'run'}", shell=True,
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"dataset": "digits"' in (tmp_path / "run" / "results.json").read_text()  # the recorded dataset applied


@pytest.mark.slow
def test_a_finished_search_keeps_the_supernet_not_the_optimizer_states(tmp_path):
    from nas.checkpoint import load_checkpoint
    from nas.search import search
    run = tmp_path / "run"
    search(_search_cfg("results_csv=null"), run)
    state = load_checkpoint(run / "checkpoint.pt", kind="supernet")
    assert "model" in state and not {"w_opt", "a_opt", "scaler"} & set(state)
    (run / "arch.json").unlink()  # derive the finished supernet again, another way
    meta = search(_search_cfg("results_csv=null", "derive.method=budgeted"), run)
    assert meta["derivation"].startswith("most likely in") and (run / "arch.json").exists()
