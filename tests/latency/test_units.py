import math

import pytest

from latency.units import format_ms, parse_latency_ms


@pytest.mark.parametrize(
    "text, ms",
    [
        ("30ms", 30.0),
        ("0.03s", 30.0),
        ("300us", 0.3),
        ("300µs", 0.3),
        ("300μs", 0.3),
        ("2.5 ms", 2.5),
        (" 2.5ms ", 2.5),
        ("1.5e1ms", 15.0),
        ("30MS", 30.0),
        ("0.5S", 500.0),
        ("300US", 0.3),
        (".5ms", 0.5),
        ("+4ms", 4.0),
    ],
)
def test_parses_units(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (30, "no unit"),
        (30.0, "no unit"),
        ("30", "no unit"),
        ("30min", "unknown unit"),
        ("30 sec", "unknown unit"),
        ("0ms", "positive"),
        ("-5ms", "positive"),
        ("nanms", "not finite"),
        ("inf ms", "not finite"),
        ("", "empty"),
        ("   ", "empty"),
        ("ms", "not a number"),
        ("30 m s", "not a number"),
        (None, "not a string"),
        (True, "no unit"),
    ],
)
def test_rejects_with_helpful_message(bad, fragment):
    with pytest.raises(ValueError) as info:
        parse_latency_ms(bad)
    message = str(info.value)
    assert fragment in message
    assert repr(bad) in message
    assert "30ms" in message and "0.03s" in message and "300us" in message


@pytest.mark.parametrize("ms", [0.0123, 0.3, 1.0, 2.5, 30.0, 123.456, 9999.0, 25_000.0])
def test_format_round_trips(ms):
    text = format_ms(ms)
    assert math.isclose(parse_latency_ms(text), ms, rel_tol=1e-3)


def test_format_examples():
    assert format_ms(30) == "30ms"
    assert format_ms(0.3) == "300us"
    assert format_ms(12_000) == "12s"


def test_budgets_on_several_devices():
    from latency.units import parse_budgets
    assert parse_budgets("30ms", "vpu") == {"vpu": 30.0}
    assert parse_budgets(["vpu:30ms", "cpu: 0.025s"], "vpu") == {"vpu": 30.0, "cpu": 25.0}
    for bad, fragment in [(["vpu30ms"], "is not device:latency"),
                          (["vpu:30ms", "vpu:20ms"], "names device 'vpu' twice"),
                          (["cpu:25ms"], "no budget on device=vpu"), (["vpu:30"], "has no unit"),
                          ([], "names no budget")]:
        with pytest.raises(ValueError, match=fragment):
            parse_budgets(bad, "vpu")
