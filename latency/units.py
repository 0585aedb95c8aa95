"""One parser for latency strings, used everywhere a latency is written by a person.

A latency must carry its unit: ``"30ms"``, ``"0.03s"``, ``"300us"``, ``"2.5 ms"``,
``"1.5e1ms"`` (units ms, s, us, µs; case-insensitive). Bare numbers are refused on
purpose: "30" could be ms, s or us, and a silent factor of 1000 in a latency
budget is exactly the kind of mistake that survives review.
"""

from __future__ import annotations

import math
import re

ACCEPTED_FORMS = "write it like 30ms, 0.03s or 300us (units: ms, s, us, µs)"

# Milliseconds per unit. "μs" (Greek mu, U+03BC) and "µs" (micro sign, U+00B5) both appear in the wild.
_UNIT_TO_MS = {
    "ms": 1.0,
    "s": 1000.0,
    "us": 1e-3,
    "µs": 1e-3,
    "μs": 1e-3,
}

_PATTERN = re.compile(
    r"""^\s*
    (?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity))
    \s*
    (?P<unit>[^\s\d.+-][^\s]*)?
    \s*$""",
    re.VERBOSE | re.IGNORECASE,
)


def parse_latency_ms(value: object) -> float:
    """Parse a latency string such as ``"30ms"`` and return it in milliseconds.

    Raises ``ValueError`` for bare numbers (``30``, ``"30"``), unknown units
    (``"30min"``, ``"30 sec"``), zero, negative, NaN or infinite values and empty
    strings; the message names the bad value and the accepted forms.
    """
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise ValueError(f"latency {value!r} has no unit: {ACCEPTED_FORMS}")
    if not isinstance(value, str):
        raise ValueError(f"latency {value!r} is not a string: {ACCEPTED_FORMS}")
    if not value.strip():
        raise ValueError(f"latency {value!r} is empty: {ACCEPTED_FORMS}")
    match = _PATTERN.match(value)
    if match is None:
        raise ValueError(f"latency {value!r} is not a number with a unit: {ACCEPTED_FORMS}")
    unit = match.group("unit")
    if unit is None:
        raise ValueError(f"latency {value!r} has no unit: {ACCEPTED_FORMS}")
    factor = _UNIT_TO_MS.get(unit.lower())
    if factor is None:
        raise ValueError(f"latency {value!r} has an unknown unit {unit!r}: {ACCEPTED_FORMS}")
    number = float(match.group("num"))
    if not math.isfinite(number):
        raise ValueError(f"latency {value!r} is not finite: {ACCEPTED_FORMS}")
    if number <= 0:
        raise ValueError(f"latency {value!r} must be positive: {ACCEPTED_FORMS}")
    ms = number * factor
    if not math.isfinite(ms) or ms <= 0:  # overflow / underflow after scaling
        raise ValueError(f"latency {value!r} is out of range: {ACCEPTED_FORMS}")
    return ms


def format_ms(ms: float) -> str:
    """Format milliseconds for people, in a form ``parse_latency_ms`` reads back.

    Sub-millisecond values are written in us, values of 10 s and more in s,
    everything else in ms, with about four significant digits.
    """
    ms = float(ms)
    if not math.isfinite(ms):
        return f"{ms} ms"
    magnitude = abs(ms)
    if magnitude != 0 and magnitude < 1.0:
        return f"{ms * 1000:.4g}us"
    if magnitude >= 10_000:
        return f"{ms / 1000:.4g}s"
    return f"{ms:.4g}ms"


BUDGET_FORMS = "one latency (30ms: on device=) or a budget per device, e.g. [vpu:30ms,cpu:25ms]"


def parse_budgets(value: object, device: str) -> dict[str, float]:
    """Latency budgets by device name, in ms: ``"30ms"`` is a budget on ``device``; a list of ``"name:latency"``
    (``["vpu:30ms", "cpu:25ms"]``, Hydra's ``latency=[vpu:30ms,cpu:25ms]``) is one budget per device, in
    order, and must name ``device`` (the device searched for). ``ValueError`` names the bad entry."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return {device: parse_latency_ms(value)}
    budgets: dict[str, float] = {}
    for entry in value:
        name, sep, latency = str(entry).partition(":")
        if not sep or not name.strip():
            raise ValueError(f"latency entry {entry!r} is not device:latency: {BUDGET_FORMS}")
        if name.strip() in budgets:
            raise ValueError(f"latency names device {name.strip()!r} twice: {BUDGET_FORMS}")
        budgets[name.strip()] = parse_latency_ms(latency)
    if not budgets:
        raise ValueError(f"latency=[] names no budget: {BUDGET_FORMS}")
    if device not in budgets:
        raise ValueError(f"latency={'[' + ','.join(map(str, value)) + ']'} has no budget on device={device}, the "
                         f"device searched for; valid: add {device}:<latency>, or pass device= one of "
                         f"{', '.join(budgets)}")
    return budgets
