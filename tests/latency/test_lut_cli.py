import subprocess
import sys
from pathlib import Path

import pytest

from latency import lut
from tests.helpers import tool_cfg

ROOT = Path(__file__).resolve().parents[2]


class _Built(Exception):
    pass


@pytest.fixture
def rebuild_calls(monkeypatch):
    calls = []

    def fake_get_table(space, profile, predictor=None, rebuild=False, progress=True):
        calls.append(rebuild)
        raise _Built

    monkeypatch.setattr(lut, "get_table", fake_get_table)
    return calls


@pytest.mark.parametrize("word,expected", [("true", True), ("True", True), ("TRUE", True), ("false", False),
                                           ("False", False)])
def test_rebuild_accepts_true_or_false(rebuild_calls, word, expected):
    with pytest.raises(_Built):
        lut.run(tool_cfg("lut", "device=vpu", f"rebuild={word}"))
    assert rebuild_calls == [expected]


def test_rebuild_rejects_other_values_in_one_line(rebuild_calls, capsys):
    for bad in ("yes", "no", "1", "0", "maybe", "", "y e s"):
        assert lut.run(tool_cfg("lut", "device=vpu", f"rebuild={bad}")) == 2
        err = capsys.readouterr().err
        assert err == f"error: rebuild={bad} is invalid; valid: true, false\n"
    assert rebuild_calls == []  # nothing was built


def test_unknown_device_is_one_line(rebuild_calls, capsys):
    assert lut.run(tool_cfg("lut", "device=tpu")) == 2
    assert capsys.readouterr().err == "error: unknown device 'tpu'; valid: cpu, cuda, gpu, host, vpu\n"


@pytest.mark.parametrize("module,keys", [("lut", ("device=", "search_space=", "rebuild=")),
                                         ("predict", ("arch=", "device=", "format=", "json", "csv"))])
def test_help_lists_the_options_and_makes_no_folder(module, keys, tmp_path):
    done = subprocess.run([sys.executable, "-m", f"latency.{module}", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"python -m latency.{module} ")
    for key in keys:
        assert key in done.stdout
    assert "vpu" in done.stdout and "host" in done.stdout
    assert not any(tmp_path.iterdir())  # a print-only tool: no outputs/ folder, no .hydra
