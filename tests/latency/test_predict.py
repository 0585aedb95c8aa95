from latency.predict import main, predict_rows
from search_spaces.spaces import get_space


def test_predict_prints_every_profile_with_provenance(tmp_path, capsys):
    arch = get_space("quadra").with_input((1, 28, 28), 10, stem_stride=2).random_arch(0)
    path = arch.save(tmp_path / "arch.json")
    assert main([f"arch={path}", "device=vpu"]) == 0
    out = capsys.readouterr().out
    assert "vpu" in out and "calibrated stand-in (not nn-Meter)" in out and "table" in out
    rows = predict_rows(arch, ["cpu", "gpu"])
    for r in rows:  # the stand-ins are additive: table sum == whole network at 1x3x224x224
        assert abs(r["table_ms"] - r["whole_net_ms"]) <= 1e-6 * r["whole_net_ms"]


def test_predict_errors(tmp_path, capsys):
    assert main(["arch=/nonexistent.json"]) == 2
    assert main([f"arch={tmp_path}/a.json", "device=tpu"]) == 2
    assert main(["device=vpu"]) == 2
    assert "missing arch=" in capsys.readouterr().err
