"""The one interface every latency backend implements.

All latencies are in milliseconds (``*_ms``) and carry their provenance: which
predictor produced them (nn-Meter built-in, our calibrated stand-in, measured on
this host) and its known error, so a number is never shown without its source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import nn

# Provenance kinds. A stand-in's numbers must never be labelled as nn-Meter's.
NNMETER_BUILTIN = "nn-Meter built-in predictor"
NNMETER_CUSTOM = "nn-Meter custom predictor"
STANDIN = "calibrated stand-in (not nn-Meter)"
ROOFLINE_STANDIN = "uncalibrated roofline stand-in (not nn-Meter)"  # datasheet constants, fitted to nothing
MEASURED = "measured"

# How a stand-in prices a network (latency.standin): every op a runtime executes, or only what nn-Meter's
# predictor for the device prices. The first is the default.
PRICINGS = ("device", "nnmeter")


@dataclass(frozen=True)
class Latency:
    """A latency estimate with where it came from."""

    ms: float
    predictor: str  # e.g. "standin/cortexA76cpu_tflite21", "nnmeter/myriadvpu_openvino2019r2"
    provenance: str  # one of the constants above
    error_note: str = ""  # known error, e.g. "LOO MAPE 12.3%, 61% within +-10%"

    def __str__(self) -> str:
        note = f"; {self.error_note}" if self.error_note else ""
        return f"{self.ms:.3f} ms [{self.predictor}: {self.provenance}{note}]"


class Predictor(Protocol):
    """Latency of a module at a given input shape (batch included, NCHW)."""

    name: str
    provenance: str
    version: str  # changes whenever the predictor's numbers can change (cache key)

    def module_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> Latency: ...
