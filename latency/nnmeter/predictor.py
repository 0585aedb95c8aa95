"""The Predictor protocol on top of an nn-Meter predictor, plus the pricing of the ops it ignores.

What nn-Meter prices (``nn_meter/kernel_detector`` + ``nn_meter/predictor/prediction``)
--------------------------------------------------------------------------------------
ONNX op types are renamed by ``OP_ALIAS`` (``kernel_detector/utils/constants.py``):
Conv->conv (dwconv when group == cin), BatchNormalization->bn, Relu/Clip->relu, Add->add,
Gemm/MatMul->fc, GlobalAveragePool/ReduceMean->gap, MaxPool/AveragePool, Concat, Slice/Split->split,
Mul->mul, Div->div, Transpose->transpose, HardSigmoid, Flatten/Reshape->reshape, Pad->pad; every
other op keeps its ONNX name (LayerNormalization, Gelu, HardSwish, Sigmoid, Sub, Pow, ...).
Ops are fused into kernels by ``fusion_rules.json`` (``BF_<a>_<b>`` rules) and by multi-op
patterns in ``kernel_detector/fusion_lib`` (se, hswish = Add-Clip-Div-Mul, channelshuffle, gap).
A kernel is priced only if ``prediction/extract_feature.py: get_predict_features`` builds features
for it (conv*, dwconv*, fc, max/avg pool, gap, channelshuffle, split, se, concat, hswish, bn,
relu, bn-relu, add, add-relu) AND ``prediction/predict_by_kernel.py`` finds a regressor of that
kernel name in the predictor (the kernel lists in ``nn_meter/configs/predictors.yaml``: the
Myriad VPU has no add/global-avgpool/concat/split regressor, the Adreno GPUs no
fc/add/addrelu/global-avgpool/split/channelshuffle). Everything else
is silently skipped, i.e. priced at 0 ms: LayerNormalization, Gelu, mul (elementwise), transpose
(it even gets ``se`` features because "transpose" contains "se", but no regressor is named so),
div, Sub, Pow, Sqrt, Softmax, Sigmoid, HardSwish as one op, and add / gap / fc on predictors
without that regressor.

The correction
--------------
:meth:`NNMeterPredictor.analyze` calls ``predictor.predict(onnx_model, model_type='onnx')``
(nn-Meter's ONNX path accepts a ``ModelProto`` or a file path), then re-reads nn-Meter's own
kernel detection (``predictor.kd``) to find which ONNX nodes ended up in a priced kernel. Every
other node (except pure view ops in :data:`FREE_OP_TYPES` and the pricing-only layout transposes
of :mod:`latency.nnmeter.onnx_pricing`) is priced by ``extra_op_ms(op_type, bytes_moved)``, bytes = sizes of all its
input tensors (activations and weights) and outputs from ONNX shape inference. The default is
:class:`MemoryBoundOpModel` (bytes / bandwidth * op factor + per-op overhead) with per-category
constants that are ASSUMPTIONS (:data:`DEFAULT_MEMORY_MODELS`), to be replaced by fitted ones.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from latency.base import NNMETER_BUILTIN, NNMETER_CUSTOM, Latency
from latency.nnmeter.errors import NNMeterUnsupportedGraphError, PredictorUnavailableError
from latency.nnmeter.onnx_pricing import (
    FREE_OP_TYPES,
    ONNX_OPSET,
    PRICING_ONLY_PREFIX,
    check_nnmeter_can_read,
    mispricing_notes,
    nbytes_of,
    nnmeter_pricing_graph,
    tensor_shapes,
    to_onnx_model,
)
from latency.nnmeter.paths import (
    FUSION_RULES_FILE,
    missing_predictor_files,
    predictor_dir,
    predictor_entry,
    unavailable_message,
)
from latency.nnmeter.session import load_latency_predictor, nnmeter_session, priced_node_names

if TYPE_CHECKING:  # pragma: no cover
    import onnx

ExtraOpMs = Callable[[str, int], float]


DEFAULT_OP_FACTORS: dict[str, float] = {
    # ASSUMPTIONS: extra passes / transcendental work relative to a plain elementwise op.
    "LayerNormalization": 2.0,  # statistics pass + normalise pass
    "Gelu": 2.0,  # erf / tanh per element
    "Erf": 2.0,
    "Softmax": 2.0,
    "Tanh": 1.5,
    "Sigmoid": 1.5,
}


class MemoryBoundOpModel:
    """``ms = overhead_ms + op_factor[op_type] * bytes / (bandwidth_gb_s * 1e9) * 1e3``.

    The default constants (:data:`DEFAULT_MEMORY_MODELS`) are assumptions, not measurements; the
    stand-in's fitted memory constants should be plugged in instead (any
    ``Callable[[str, int], float]`` works; give it a ``version`` attribute for cache keys).
    """

    def __init__(
        self,
        bandwidth_gb_s: float,
        overhead_ms: float,
        op_factors: Mapping[str, float] | None = None,
        label: str = "custom",
    ) -> None:
        if not (bandwidth_gb_s > 0 and overhead_ms >= 0):
            raise ValueError(f"bad memory model constants: {bandwidth_gb_s} GB/s, {overhead_ms} ms")
        self.bandwidth_gb_s = float(bandwidth_gb_s)
        self.overhead_ms = float(overhead_ms)
        self.op_factors = dict(DEFAULT_OP_FACTORS if op_factors is None else op_factors)
        self.label = label

    def __call__(self, op_type: str, nbytes: int) -> float:
        factor = self.op_factors.get(op_type, 1.0)
        return self.overhead_ms + factor * nbytes / (self.bandwidth_gb_s * 1e9) * 1e3

    @property
    def version(self) -> str:
        factors = ",".join(f"{k}={v:g}" for k, v in sorted(self.op_factors.items()))
        return f"memory-model[{self.label}:{self.bandwidth_gb_s:g}GB/s+{self.overhead_ms:g}ms;{factors}]"

    def __repr__(self) -> str:
        return f"MemoryBoundOpModel({self.bandwidth_gb_s:g} GB/s, {self.overhead_ms:g} ms/op, {self.label!r})"


# ASSUMED effective bandwidth and per-op overhead per nn-Meter device category, roughly scaled to
# nn-Meter's own model latencies (e.g. MobileNetV2: A76 46 ms, Adreno 10 ms, Myriad 23 ms).
DEFAULT_MEMORY_MODELS: dict[str, MemoryBoundOpModel] = {
    "cpu": MemoryBoundOpModel(4.0, 0.010, label="assumed-cpu"),  # Cortex-A76, TFLite, 1 thread
    "gpu": MemoryBoundOpModel(15.0, 0.020, label="assumed-gpu"),  # Adreno 630/640, TFLite GPU
    "vpu": MemoryBoundOpModel(6.0, 0.030, label="assumed-vpu"),  # Myriad X, OpenVINO 2019R2
}


def default_extra_op_model(category: str) -> MemoryBoundOpModel:
    """The assumed memory model for an nn-Meter device category (cpu / gpu / vpu)."""
    return DEFAULT_MEMORY_MODELS.get(str(category).lower(), DEFAULT_MEMORY_MODELS["cpu"])


@dataclass(frozen=True)
class UnpricedOp:
    """An ONNX node nn-Meter prices at 0 ms, with the correction charged for it."""

    name: str
    op_type: str
    nbytes: int
    ms: float


@dataclass(frozen=True)
class NNMeterBreakdown:
    nnmeter_ms: float  # nn-Meter's own prediction
    unpriced: tuple[UnpricedOp, ...]  # ops nn-Meter skipped, each priced by extra_op_ms
    notes: tuple[str, ...] = ()  # known mispricings we could not correct

    @property
    def correction_ms(self) -> float:
        return float(sum(op.ms for op in self.unpriced))

    @property
    def total_ms(self) -> float:
        return self.nnmeter_ms + self.correction_ms

    def correction_by_type(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for op in self.unpriced:
            out[op.op_type] = out.get(op.op_type, 0.0) + op.ms
        return out


def _files_fingerprint(folder: Path) -> str:
    """A short hash of the predictor files' names, sizes and times: the cache key changes with them."""
    digest = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".pkl" or path.name == FUSION_RULES_FILE:
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def _nnmeter_version() -> str:
    """The installed nn-meter distribution's version, or "unknown"."""
    try:
        return importlib.metadata.version("nn-meter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _no_correction(op_type: str, nbytes: int) -> float:
    """``pricing=nnmeter``: what nn-Meter drops costs 0 ms."""
    return 0.0


_no_correction.version = "no correction (nn-Meter semantics)"  # type: ignore[attr-defined]


class NNMeterPredictor:
    """The Predictor protocol on top of an nn-Meter predictor, plus the correction for the ops it
    prices at 0 ms. Never downloads: a missing predictor raises :class:`PredictorUnavailableError`.

    ``extra_op_ms(op_type, nbytes) -> ms`` prices each unpriced op; default
    :func:`default_extra_op_model` for the predictor's category (assumed constants).
    """

    def __init__(
        self,
        predictor: str,
        *,
        home: str | os.PathLike | None = None,
        extra_op_ms: ExtraOpMs | None = None,
        pricing: str = "device",
    ) -> None:
        if pricing not in ("device", "nnmeter"):
            raise ValueError(f"pricing={pricing} is invalid; valid: device, nnmeter")
        # pricing="nnmeter": nn-Meter's own semantics -- no correction for the ops it drops, no rewrite of a
        # Linear over pixels into a 1x1 conv (nn-Meter prices it as one row)
        self.pricing = pricing
        if pricing == "nnmeter":
            extra_op_ms = _no_correction
        entry = predictor_entry(predictor, home)
        if entry is None or missing_predictor_files(predictor, home):
            raise PredictorUnavailableError(unavailable_message(predictor, home))
        self.predictor = predictor
        self.home = home
        self.custom = "download" not in entry
        self.category = str(entry.get("category", "cpu"))
        self._nm = load_latency_predictor(predictor, home=home)
        self.extra_op_ms: ExtraOpMs = extra_op_ms or default_extra_op_model(self.category)
        self.name = f"nnmeter/{predictor}"
        self.provenance = NNMETER_CUSTOM if self.custom else NNMETER_BUILTIN
        extra_version = getattr(self.extra_op_ms, "version", None) or getattr(
            self.extra_op_ms, "__qualname__", type(self.extra_op_ms).__qualname__
        )
        self.version = (
            f"nn-meter {_nnmeter_version()}; {predictor} v{entry.get('version')}; "
            f"files {_files_fingerprint(predictor_dir(predictor, home))}; onnx opset {ONNX_OPSET}; "
            f"pricing rewrites v1; {extra_version}"
        ) + ("" if pricing == "device" else f"; pricing {pricing}")

    def analyze_onnx(self, model: onnx.ModelProto) -> NNMeterBreakdown:
        """nn-Meter's prediction for an ONNX model plus the priced list of ops it skipped."""
        pricing = nnmeter_pricing_graph(model, linear_as_conv=self.pricing == "device")
        check_nnmeter_can_read(pricing)
        with nnmeter_session(self.home):
            try:
                nn_ms = float(self._nm.predict(pricing, model_type="onnx"))
                priced = priced_node_names(self._nm)
            except (IndexError, KeyError) as exc:
                raise NNMeterUnsupportedGraphError(
                    f"nn-Meter 2.0 could not price this graph ({exc!r}); its ONNX path assumes 4-D NCHW "
                    "feature maps (e.g. elementwise add on rank-3 token tensors breaks its feature "
                    "extraction)"
                ) from exc
        shapes = tensor_shapes(pricing)
        unpriced = []
        for node in pricing.graph.node:
            if node.name in priced or node.op_type in FREE_OP_TYPES or node.name.startswith(PRICING_ONLY_PREFIX):
                continue
            nbytes = sum(nbytes_of(*shapes[n]) for n in (*node.input, *node.output) if n in shapes)
            ms = float(self.extra_op_ms(node.op_type, nbytes))
            unpriced.append(UnpricedOp(node.name, node.op_type, nbytes, ms))
        return NNMeterBreakdown(nn_ms, tuple(unpriced), tuple(mispricing_notes(pricing)))

    def analyze(self, module: nn.Module, input_shape: Sequence[int]) -> NNMeterBreakdown:
        """:meth:`analyze_onnx` of ``module`` exported at ``input_shape`` (batch 1 only)."""
        shape = tuple(int(d) for d in input_shape)
        if not shape or shape[0] != 1:
            raise ValueError(f"nn-Meter predicts batch 1 only (its features ignore the batch); got {shape}")
        return self.analyze_onnx(to_onnx_model(module, shape))

    def module_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        """The corrected latency, with nn-Meter's share and the correction in the note."""
        b = self.analyze(module, input_shape)
        if self.pricing == "nnmeter":
            types = "/".join(sorted({op.op_type for op in b.unpriced}))
            note = f"nn-Meter {b.nnmeter_ms:.3f} ms, nn-Meter semantics ({types or 'nothing'} at 0 ms, no correction)"
        elif b.unpriced:
            types = "/".join(sorted(b.correction_by_type()))
            note = (
                f"nn-Meter {b.nnmeter_ms:.3f} ms + {b.correction_ms:.3f} ms for {types} "
                f"priced by memory model ({getattr(self.extra_op_ms, 'version', 'custom')})"
            )
        else:
            note = f"nn-Meter {b.nnmeter_ms:.3f} ms; every op priced by nn-Meter kernels"
        if b.notes:
            note += "; WARNING: " + "; ".join(b.notes)
        return Latency(ms=b.total_ms, predictor=self.name, provenance=self.provenance, error_note=note)
