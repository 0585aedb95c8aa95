"""Errors of the nn-Meter bridge and the check that the optional ``nnmeter`` extra is installed.

Nothing here imports ``nn_meter``; :func:`require_module` only looks the package up.
"""

from __future__ import annotations

import importlib.util


class PredictorUnavailableError(FileNotFoundError):
    """A predictor's files are missing (nn-Meter would download them; we never do)."""


class NNMeterUnsupportedGraphError(ValueError):
    """nn-Meter 2.0's ONNX path cannot convert or price this graph."""


EXTRA_HINT = "install the optional extra: pip install 'quadranas[nnmeter]' (nn-meter, onnxsim, setuptools<81)"


class NNMeterNotInstalledError(PredictorUnavailableError):
    """nn-meter or onnxsim, from the ``nnmeter`` extra, is not installed (so no predictor is available)."""


def nnmeter_installed() -> bool:
    """True if the ``nn_meter`` package can be found (without importing it)."""
    try:
        return importlib.util.find_spec("nn_meter") is not None
    except (ImportError, ValueError):
        return False


def require_module(module: str, purpose: str) -> None:
    """Raise :class:`NNMeterNotInstalledError` naming the extra if ``module`` cannot be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise NNMeterNotInstalledError(f"{purpose} needs the {module!r} package, which is not installed; {EXTRA_HINT}. "
                                       "Without it the device profiles use the calibrated stand-ins.")
