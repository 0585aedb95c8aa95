"""``python -m experiments.paper``: every paper table from one command (smoke-test sizes)."""

import pytest

from experiments import paper


@pytest.mark.slow
def test_every_table_from_one_command(tmp_path, capsys):
    out = tmp_path / "out"
    assert paper.main(["--quick", "--out", str(out), "--root", str(tmp_path / "runs")]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"table1_throughput.csv", "table2_block_memory.csv", "table3_search_per_device.csv",
            "table3_search_per_device.png", "table4_receptive_field.csv"} <= names
    log = capsys.readouterr().out
    assert log.count("=== Table") == 4 and "wrote table2_block_memory.csv" in log


def test_unknown_table_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        paper.main(["--tables", "1,7"])
    assert e.value.code == 2 and "unknown table(s) 7; valid: 1, 2, 3, 4" in capsys.readouterr().err
