"""Files a user did not write: arch.json values, foreign CSVs, run folders in use, faults mid-run.

Every case ends with a non-zero exit and one ``error:`` line naming the key or file, no traceback,
and nothing already written lost or altered.
"""

import os
import subprocess
import sys
from pathlib import Path

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
