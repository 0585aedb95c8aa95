import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latency.predict import COLUMNS, predict_rows, run
from search_spaces.spaces import get_space
from tests.helpers import tool_cfg


def main(argv: list[str]) -> int:
    """``python -m latency.predict ARGV`` in-process."""
    return run(tool_cfg("predict", *argv))


def test_predict_prints_every_profile_with_provenance(tmp_path, capsys):
    arch = get_space("quadra").with_input((1, 28, 28), 10, stem_stride=2).random_arch(0)
    path = arch.save(tmp_path / "arch.json")
    assert main([f"arch={path}", "device=vpu"]) == 0
    out = capsys.readouterr().out
    assert "vpu" in out and "calibrated stand-in (not nn-Meter)" in out and "table" in out
    rows = predict_rows(arch, ["cpu", "gpu"])
    for r in rows:  # the stand-ins are additive: table sum == whole network at 1x3x224x224
        assert abs(r["table_ms"] - r["whole_net_ms"]) <= 1e-6 * r["whole_net_ms"]
        assert abs(r["table_error_pct"]) <= 1e-4
    assert re.search(r"  vpu\s+table\s+[\d.]+ ms \(\s*[+-][\d.]+% of the whole\), whole network\s+[\d.]+ ms", out)


def test_predict_errors(tmp_path, capsys):
    assert main(["arch=/nonexistent.json"]) == 2
    assert main([f"arch={tmp_path}/a.json", "device=tpu"]) == 2
    assert main(["device=vpu"]) == 2
    assert "missing arch=" in capsys.readouterr().err


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory):
    arch = get_space("quadra").with_input((1, 28, 28), 10, stem_stride=2).random_arch(1)
    return arch.save(tmp_path_factory.mktemp("arch") / "arch.json")


def test_format_json_is_a_list_of_rows(arch_file, capsys):
    assert main([f"arch={arch_file}", "device=vpu", "format=json"]) == 0
    rows = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert [tuple(r) for r in rows] == [COLUMNS]
    (row,) = rows
    assert row["arch"] == str(arch_file) and row["device"] == "vpu"
    assert row["table_ms"] > 0 and row["whole_net_ms"] > 0
    assert row["provenance"] == "calibrated stand-in (not nn-Meter)"


def test_format_csv_has_a_header_and_one_row_per_device(arch_file, capsys):
    assert main([f"arch={arch_file}", "device=vpu", "format=csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(COLUMNS)
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["device"] == "vpu" and float(row["table_ms"]) > 0 and float(row["whole_net_ms"]) > 0


def test_format_table_is_the_default(arch_file, capsys):
    assert main([f"arch={arch_file}", "device=vpu", "format=table"]) == 0
    explicit = capsys.readouterr().out
    assert main([f"arch={arch_file}", "device=vpu"]) == 0
    assert capsys.readouterr().out == explicit and "whole network" in explicit


def test_bad_format_is_one_line_naming_the_choices(arch_file, capsys):
    for bad in ("xml", "JSON", ""):
        assert main([f"arch={arch_file}", "device=vpu", f"format={bad}"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"error: format={bad} is invalid; valid: table, json, csv\n"


def test_bad_format_exits_2_without_a_traceback(arch_file):
    done = subprocess.run([sys.executable, "-m", "latency.predict", f"arch={arch_file}", "format=yaml"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: format=yaml is invalid; valid: table, json, csv\n"


def test_per_layer_breakdown_sums_to_the_table(tmp_path, capsys):
    arch = get_space("quadra").random_arch(3)
    path = arch.save(tmp_path / "arch.json")
    assert main([f"arch={path}", "device=vpu", "per_layer=true", "format=json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    layers = [r for r in rows if r["op"] != "fixed"]
    assert [r["op"] for r in layers] == list(arch.choices) and len(rows) > len(layers)  # plus stem, head, ...
    (whole,) = predict_rows(arch, ["vpu"])
    assert sum(r["ms"] for r in rows) == pytest.approx(whole["table_ms"], rel=1e-9)
    assert main([f"arch={path}", "device=vpu", "per_layer=true"]) == 0
    assert re.search(r"  sum\s+[\d.]+ ms", capsys.readouterr().out)
    assert main(["arch=quadranet25_xxs", "per_layer=true"]) == 2  # a fixed model has no table rows
    assert "per_layer=true needs an architecture of a search space" in capsys.readouterr().err
