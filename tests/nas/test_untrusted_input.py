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
                                            "device=vpu", "latency=12ms", "derive.candidates=4",
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
