import pytest

from latency import lut, predict


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
        lut.main(["device=vpu", f"rebuild={word}"])
    assert rebuild_calls == [expected]


def test_rebuild_rejects_other_values_in_one_line(rebuild_calls, capsys):
    for bad in ("yes", "no", "1", "0", "maybe", "", "y e s"):
        assert lut.main(["device=vpu", f"rebuild={bad}"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: rebuild={bad} is invalid; valid: true, false\n"
    assert rebuild_calls == []  # nothing was built


@pytest.mark.parametrize("module,keys", [(lut, ("device=", "search_space=", "rebuild=")),
                                         (predict, ("arch=", "device=", "format=", "table|json|csv"))])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage(module, keys, flag, capsys, rebuild_calls):
    assert module.main([flag]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: python -m latency.") and err == ""
    for key in keys:
        assert key in out
    assert "vpu" in out and "host" in out  # device names come from the shipped profiles
    assert rebuild_calls == []
