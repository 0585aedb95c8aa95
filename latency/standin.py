"""Calibrated latency stand-ins: a kernel-level cost model per device (NOT nn-Meter).

nn-Meter's built-in predictor files are not available here (see DESIGN.md section 4),
so each nn-Meter device gets a small linear cost model over the kernels of
:func:`latency.kernels.trace_kernels`, fitted to nn-Meter's OWN published
predictions for 18 standard CNNs (``data/nnmeter_reference_latency.csv``, from
nn-Meter's test data, MIT) and, for the Cortex-A76 and the Myriad VPU, at the same time to
whole-network latencies MEASURED on those devices for 1,007 NAS-Bench-201 networks at 32 px
(``data/nnmeter_measured_nb201_{cpu,vpu}.csv``: half of nn-Meter's dataset rows, even ids;
:mod:`latency.nb201` builds the measured networks). Numbers from this module are always labelled
``provenance = STANDIN`` (the a100 roofline, fitted to nothing: ``ROOFLINE_STANDIN``); they are
never nn-Meter's.

Cost model (fitted devices)
---------------------------
Kernels are first fused the way deployment runtimes (TFLite, OpenVINO) do:

* a ``bn`` whose input is produced by a conv/dwconv/fc is folded into it (cost 0);
* a ReLU/ReLU6 whose input is produced by a conv/dwconv/fc/bn/add/pool is fused (cost 0; TFLite's pooling
  ops carry a fused activation, and OpenVINO fuses a ReLU into pooling).
  Other activations (hswish, sigmoid, silu, ...) stay separate kernels.

Every remaining kernel falls in one cost class and costs (ms)::

    conv  (regular/grouped conv, and fc over many rows = a 1x1 conv / GEMM)
          a_conv * macs + b_conv * bytes + o_conv
    dwconv a_dw * macs + b_conv * bytes + o_dw
    fc    (one row, e.g. a classifier at batch 1: a weight-streaming GEMV)
          b_fc * bytes + o_conv
    memory-bound (bn, activations, add, mul, pool, global_pool, concat, layernorm,
          gelu, transpose, channel_shuffle, softmax, reduce, resize)
          b_mem * bytes + o_mem

plus, on the A76 only, ``c_im2col * im2col_bytes`` for a k x k (k > 1) regular conv (its im2col
patch buffer, Hout*Wout*k*k*Cin/groups floats), ``a_strided * macs`` for a strided one and
``c_window * window_bytes`` for a pooling kernel (output elements x k x k floats read through its
windows); on the VPU only ``c_act * bytes`` for an unfused activation kernel (hswish, sigmoid, GELU);
and on both a fixed per-model cost ``o_model`` (the runtime's cost per inference), charged once, on the
first kernel that reads the image (see :data:`DEVICE_FEATURES`). So a conv on a small map or a 1x1 conv
costs its MACs over the device's throughput plus its bytes over its bandwidth plus the per-kernel
overhead; an elementwise op or a pool its bytes over bandwidth plus its overhead. Dedicated 1x1,
small-map, per-channel and per-type elementwise terms were tried and did not lower the cross-validated
error (docs/latency.md lists every term tried). 8 constants per device (A76: 12, VPU: 10), non-negative,
fitted by scipy's bounded least squares on the relative error (each model's row weighted by
1/latency, so VGGs do not dominate; on the A76 and the VPU the 18 CNNs and the 1,007 measured networks
each carry half of the total weight). An fc over r > 1 rows costs max(conv-class cost, fc-class cost),
so its cost never drops below the single-row cost.

Pricing choice for ops nn-Meter ignores: nn-Meter prices LayerNorm, GELU,
elementwise multiply and transposes at 0 ms (and on the VPU even ``add``). Those ops
are about 25-30% of a QuadraBlock on a CPU, so this stand-in prices them with the
memory-bound term like every other elementwise kernel. ``b_mem`` is bounded below
by 1 / (the device's peak DRAM bandwidth), so a memory-bound kernel is never free
even where the CNN fit alone would set its bandwidth term to zero (the VPU). We also
tried mirroring nn-Meter's free ``add`` on the VPU: leave-one-out error got worse
(20.3% vs 18.5% MAPE), so ``add`` is priced on every device.

Pricing (``pricing=device|nnmeter``)
------------------------------------
``device`` (the default) is the cost model above: every kernel a runtime executes is priced.
``nnmeter`` prices exactly the kernels nn-Meter's predictor for the same device would price
(:mod:`latency.nnmeter.semantics`; what nn-Meter's own kernel detection makes of our blocks is in
``experiments/results/nnmeter_kernels.md``), each with the SAME fitted per-kernel cost, and gives 0 ms to
what nn-Meter drops:

* kernels map to nn-Meter's regressor names (conv -> conv-bn-relu, dwconv -> dwconv-bn-relu, fc, bn /
  bnrelu, relu, hardswish -> hswish, add / addrelu, max/avg pool, global pool -> global-avgpool, concat,
  channel shuffle; the sigmoid gate and its multiply of a squeeze-excite -> se); a kernel whose regressor
  the device's predictor lacks costs 0 (on the Myriad VPU: add without a fused ReLU, global pool, concat;
  on the Adrenos also fc);
* LayerNorm, GELU, elementwise multiply (outside SE), transposes, softmax, other activations and
  reductions cost 0 on every device;
* an fc over r > 1 rows (a Linear over the pixels of a map) is priced as ONE row: nn-Meter's fc features
  are (cin, cout, flops of one vector), with no row count.

The roofline (``a100``) has no nn-Meter counterpart and prices every kernel under either pricing.

A100 (not fitted)
-----------------
nn-Meter has no server-GPU predictor. ``a100`` is an uncalibrated roofline per
kernel, eager PyTorch at batch 1, no fusion::

    t = max(2 * macs / PEAK_FLOPS, bytes / HBM_BANDWIDTH) + KERNEL_LAUNCH

with NVIDIA A100 datasheet constants (see ``A100_ROOFLINE``). A sanity range only:
the QuadraNet paper (Table III) reports 1.7-2.9 ms on an A100 for mobile-size models.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from torch import nn

from latency.base import PRICINGS, ROOFLINE_STANDIN, STANDIN, Latency
from latency.kernels import BYTES_PER_ELEMENT, Kernel, trace_kernels
from latency.nnmeter.semantics import PREDICTOR_KERNELS
from search_spaces.io import atomic_write_text

# 2: the A76 im2col and strided-conv terms; 3: fitted on measured NAS-Bench-201 latencies too, ReLU fused into a
# pool, the A76 pool-window and the VPU activation terms, a fixed per-model cost
CODE_VERSION = "standin-cost-model-3"
DATA_DIR = Path(__file__).resolve().parent / "data"
CONSTANTS_PATH = DATA_DIR / "standin_constants.json"
PACKAGED_REFERENCE_CSV = DATA_DIR / "nnmeter_reference_latency.csv"  # package data, in the wheel
PROVENANCE = ("fitted to nn-Meter v1.0 built-in predictor outputs from nn-Meter's test data (MIT); the A76 and the "
              "Myriad VPU also to whole-network latencies measured on those devices for NAS-Bench-201 networks "
              "(nn-Meter's dataset, even ids, Open Use of Data Agreement 1.0)")
# Devices with measured whole-network latencies (latency/nb201.py): fitted on both sources at once.
MEASURED_KEYS = {"cortexA76cpu_tflite21": "cpu", "myriadvpu_openvino2019r2": "vpu"}
CV_FOLDS = 5
REFERENCE_INPUT_SHAPE = (1, 3, 224, 224)

FITTED_DEVICES = (
    "cortexA76cpu_tflite21",
    "adreno640gpu_tflite21",
    "adreno630gpu_tflite21",
    "myriadvpu_openvino2019r2",
)
ROOFLINE_DEVICES = ("a100",)
DEVICE_KEYS = FITTED_DEVICES + ROOFLINE_DEVICES

# Peak DRAM bandwidth (bytes/s): lower bound of the memory-bound term (b_mem >= 1 / peak).
PEAK_DRAM_BANDWIDTH = {
    # Pixel 4 = Snapdragon 855: LPDDR4X-4266, 4 x 16 bit -> 34.1 GB/s (Qualcomm SD855 product brief)
    "cortexA76cpu_tflite21": 34.1e9,
    "adreno640gpu_tflite21": 34.1e9,
    # Snapdragon 845 (Adreno 630): LPDDR4X-3733, 4 x 16 bit -> 29.9 GB/s (Qualcomm SD845 product brief)
    "adreno630gpu_tflite21": 29.9e9,
    # Intel NCS2 / Myriad X: Intel publishes no figure; ASSUMED LPDDR4-3200 x 32 bit = 12.8 GB/s
    "myriadvpu_openvino2019r2": 12.8e9,
}

# NVIDIA A100 Tensor Core GPU datasheet (2020/2021): FP32 19.5 TFLOPS, TF32 tensor 156 TFLOPS,
# FP16/BF16 tensor 312 TFLOPS; HBM2 1,555 GB/s (40 GB SXM4) / HBM2e 2,039 GB/s (80 GB).
# Batch-1 conv/GEMM kernels of mobile-size nets do not approach tensor-core peaks, so the compute
# roof is the FP32 CUDA-core peak; memory is the 40 GB part's HBM bandwidth. Launch: a CUDA kernel
# launch is ~3-5 us and eager PyTorch adds dispatcher/Python overhead; 8 us per kernel is in the
# commonly quoted 5-10 us range. Not fitted to anything.
A100_ROOFLINE = {
    "peak_flops": 19.5e12,
    "hbm_bandwidth_Bps": 1.555e12,
    "kernel_launch_s": 8e-6,
    "source": "NVIDIA A100 datasheet (FP32 19.5 TFLOPS, HBM2 1555 GB/s); ~8 us eager launch overhead",
}

FEATURES = ("conv_macs", "dw_macs", "fc_bytes", "conv_bytes", "mem_bytes", "n_conv", "n_dw", "n_mem",
            "conv_im2col_bytes", "conv_strided_macs", "pool_window_bytes", "act_bytes", "n_model")
BASE_FEATURES = FEATURES[:8]
# The two convolution terms are fitted for the A76 only (TFLite's CPU convs are im2col + GEMM: a k x k conv
# writes and reads a k*k*Cin/groups x Hout*Wout patch buffer, a 1x1 conv none; and strided convs ran slower per
# MAC in nn-Meter's A76 data). Chosen by leave-one-out error among 8 candidate terms and their pairs (selection
# on the same 18 models: see the held-out check on nn-Meter's torch conversions in latency/data/README.md);
# every other device keeps the 8 base terms (the extra coefficients are 0).
# Fitted on the measured NAS-Bench-201 half too (cost model 3), each device gains terms chosen by their k-fold error
# there and their leave-one-out error on the 18 CNNs (docs/latency.md lists every term tried): the A76 the window
# reads of a pooling kernel, the VPU the extra cost per byte of an unfused activation; both a fixed per-model cost.
DEVICE_FEATURES = {
    "cortexA76cpu_tflite21": BASE_FEATURES + ("conv_im2col_bytes", "conv_strided_macs", "pool_window_bytes", "n_model"),
    "myriadvpu_openvino2019r2": BASE_FEATURES + ("act_bytes", "n_model"),
}
FEATURE_DOC = {
    "conv_macs": "ms per MAC of regular/grouped convs and multi-row fc (GEMM)",
    "dw_macs": "ms per MAC of depthwise convs",
    "fc_bytes": "ms per byte (weights + activations) of single-row fc (GEMV)",
    "conv_bytes": "ms per byte read+written by conv/dwconv/GEMM kernels",
    "mem_bytes": "ms per byte read+written by memory-bound kernels (>= 1/peak DRAM bandwidth)",
    "n_conv": "ms overhead per conv / fc kernel",
    "n_dw": "ms overhead per depthwise conv kernel",
    "n_mem": "ms overhead per memory-bound kernel",
    "conv_im2col_bytes": "ms per byte of the im2col buffer of a k x k (k > 1) regular/grouped conv (A76 only)",
    "conv_strided_macs": "ms per MAC of regular/grouped convs with stride > 1, on top of conv_macs (A76 only)",
    "pool_window_bytes": "ms per byte a pooling kernel reads through its windows (output elements x k x k x 4), "
                         "on top of mem_bytes (A76 only)",
    "act_bytes": "ms per byte read+written by an unfused activation kernel (hswish, sigmoid, GELU, a ReLU with no "
                 "producer to fuse into), on top of mem_bytes (VPU only)",
    "n_model": "ms per model: the runtime's fixed cost per inference, charged once on the first kernel that reads "
               "the image (the trace's input, <= 4 channels); not under pricing=nnmeter",
}
# Without measured rows (e.g. ``measured_rows=0``) the A76 keeps cost model 2's terms.
REFERENCE_ONLY_FEATURES = {"cortexA76cpu_tflite21": BASE_FEATURES + ("conv_im2col_bytes", "conv_strided_macs")}
MEMORY_BOUND_TYPES = frozenset({
    "bn", "relu", "add", "mul", "pool", "global_pool", "concat", "layernorm", "gelu", "transpose",
    "channel_shuffle", "softmax", "reduce", "resize",
})
_FUSABLE_ACTS = frozenset({"relu", "relu6", "hardtanh"})
_PRODUCERS_BN = frozenset({"conv", "dwconv", "fc"})
# TFLite's AVERAGE/MAX_POOL_2D carry a fused activation and OpenVINO fuses a ReLU into pooling: a ReLU right after
# a pool is free (cost model 3; the measured NAS-Bench-201 VPU latencies show it, see docs/latency.md)
_PRODUCERS_ACT = frozenset({"conv", "dwconv", "fc", "bn", "add", "pool"})
ACTIVATION_TYPES = frozenset({"relu", "gelu"})  # pointwise activations: the act_bytes class

DEFAULT_PRICING = PRICINGS[0]
# nn-Meter regressor of an (unfused) kernel type; None: nn-Meter prices it at 0 ms on every predictor.
_NNMETER_REGRESSOR = {
    "conv": "conv-bn-relu", "dwconv": "dwconv-bn-relu", "fc": "fc", "bn": "bn", "add": "add",
    "global_pool": "global-avgpool", "concat": "concat", "channel_shuffle": "channelshuffle",
    "layernorm": None, "gelu": None, "transpose": None, "softmax": None, "reduce": None, "resize": None,
    "mul": None,
}
_NNMETER_ACT = {"relu": "relu", "relu6": "relu", "hardtanh": "relu", "hardswish": "hswish"}
_SE_GATES = frozenset({"sigmoid", "hardsigmoid"})


def parse_pricing(value: str) -> str:
    """One of :data:`PRICINGS`; anything else is a one-line error naming them."""
    if value not in PRICINGS:
        raise ValueError(f"pricing={value} is invalid; valid: {', '.join(PRICINGS)}")
    return value


def nnmeter_dropped(device_key: str) -> str:
    """Short list of the op kinds nn-Meter prices at 0 ms on ``device_key`` (for provenance strings)."""
    kinds = ["LN", "GELU", "Mul", "Transpose"]
    have = PREDICTOR_KERNELS[device_key]
    if "add" not in have:
        kinds.append("Add")
    if "fc" not in have:
        kinds.append("FC")
    return "/".join(kinds)


def pricing_note(pricing: str, device_key: str) -> str:
    """What a pricing means, for provenance strings; "" for ``device`` (every op priced)."""
    if pricing == "device" or device_key not in PREDICTOR_KERNELS:
        return ""
    return (f"nn-Meter semantics ({nnmeter_dropped(device_key)} at 0 ms, fc priced as one row)")


def nnmeter_regressor(k: Kernel, producer: Kernel | None, fused_relu: bool) -> str | None:
    """The nn-Meter regressor an unfused kernel would be priced by (None: no kernel nn-Meter prices)."""
    if k.type == "relu":
        if k.op in _SE_GATES:
            return "se"
        return _NNMETER_ACT.get(k.op)
    if k.type == "mul":
        return "se" if producer is not None and producer.type == "relu" and producer.op in _SE_GATES else None
    if k.type == "pool":
        return "maxpool" if "max" in k.op else "avgpool"
    if k.type in ("bn", "add") and fused_relu:
        return k.type + "relu"
    return _NNMETER_REGRESSOR.get(k.type)


def _one_row_fc(k: Kernel) -> Kernel:
    """``k`` (an fc over any number of rows) as nn-Meter sees it: one input vector, one output vector."""
    cin = int(k.input_shape[-1]) if k.input_shape else 0
    cout = int(k.output_shape[-1]) if k.output_shape else 0
    return replace(k, input_shape=(1, cin), output_shape=(1, cout), macs=cin * cout,
                   bytes=BYTES_PER_ELEMENT * (cin + k.params + cout))


# --------------------------------------------------------------------------- per-kernel features


def _fc_rows(k: Kernel) -> int:
    if not k.output_shape:
        return 1
    rows = 1
    for s in k.output_shape[:-1]:
        rows *= int(s)
    return rows


def fused_mask(kernels: Sequence[Kernel]) -> list[bool]:
    """True where a kernel is folded into its producer (conv->bn, conv/bn/add->relu)."""
    producer: dict[int, Kernel] = {}
    out: list[bool] = []
    for k in kernels:
        p = producer.get(k.in_ids[0]) if k.in_ids else None
        fused = False
        if p is not None:
            if k.type == "bn" and p.type in _PRODUCERS_BN:
                fused = True
            elif k.type == "relu" and k.op in _FUSABLE_ACTS and p.type in _PRODUCERS_ACT:
                fused = True
        producer[k.out_id] = k
        out.append(fused)
    return out


def _zero() -> dict[str, float]:
    return dict.fromkeys(FEATURES, 0.0)


def nnmeter_kernels(kernels: Sequence[Kernel], device_key: str) -> list[Kernel | None]:
    """Per kernel, what ``pricing=nnmeter`` prices on ``device_key``: the kernel itself, a one-row copy of a
    multi-row fc, or None (fused into its producer, or priced at 0 ms by nn-Meter's predictor)."""
    have = PREDICTOR_KERNELS[device_key]
    mask = fused_mask(kernels)
    producer: dict[int, Kernel] = {k.out_id: k for k in kernels}
    relu_fused_into = {id(producer[k.in_ids[0]]) for k, f in zip(kernels, mask, strict=True)
                       if f and k.type == "relu" and k.in_ids and k.in_ids[0] in producer}
    out: list[Kernel | None] = []
    for k, fused in zip(kernels, mask, strict=True):
        p = producer.get(k.in_ids[0]) if k.in_ids else None
        if k.type == "mul" and len(k.in_ids) > 1:  # the gate may be either operand
            p = next((producer[i] for i in k.in_ids if i in producer and producer[i].type == "relu"
                      and producer[i].op in _SE_GATES), p)
        name = None if fused else nnmeter_regressor(k, p, id(k) in relu_fused_into)
        if name is None or name not in have:
            out.append(None)
        else:
            out.append(_one_row_fc(k) if k.type == "fc" and _fc_rows(k) > 1 else k)
    return out


def kernel_feature_rows(kernels: Sequence[Kernel], pricing: str = DEFAULT_PRICING, device_key: str = ""
                        ) -> list[tuple[Kernel, list[dict[str, float]]]]:
    """Per priced kernel, its alternative feature vectors (cost = max over them; usually one).
    ``pricing="device"``: every unfused kernel; ``"nnmeter"``: those nn-Meter's ``device_key`` predictor
    prices (:func:`nnmeter_kernels`), a multi-row fc as one row."""
    if pricing == "nnmeter":
        seen = nnmeter_kernels(kernels, device_key)
        pairs = [(k, False) for k in seen if k is not None]
    else:
        pairs = list(zip(kernels, fused_mask(kernels), strict=True))
    rows = []
    model_charged = pricing == "nnmeter"  # nn-Meter sums kernels: no per-model cost
    for k, fused in pairs:
        if fused:
            continue
        alts = kernel_alternatives(k)
        if not model_charged and _reads_image(k):
            model_charged = True
            for f in alts:
                f["n_model"] = 1.0
        rows.append((k, alts))
    return rows


def _reads_image(k: Kernel) -> bool:
    """True for a kernel reading the traced module's input (tensor id 0) when that is an image (<= 4 channels)."""
    return 0 in k.in_ids and len(k.input_shape) == 4 and int(k.input_shape[1]) <= 4


def _window_bytes(k: Kernel) -> float:
    """Bytes a pooling kernel reads through its windows: output elements x window area x 4."""
    if len(k.output_shape) != 4 or len(k.input_shape) != 4:
        return 0.0
    n, c, h, w = k.output_shape
    if k.kernel_size > 0:
        area = k.kernel_size ** 2
    else:  # adaptive pooling: the window that tiles the input
        area = math.ceil(k.input_shape[2] / max(h, 1)) * math.ceil(k.input_shape[3] / max(w, 1))
    return float(BYTES_PER_ELEMENT * n * c * h * w * area)


def kernel_alternatives(k: Kernel) -> list[dict[str, float]]:
    """The alternative feature vectors of one unfused kernel (its cost is the max over them; usually one);
    without the per-model term, which :func:`kernel_feature_rows` adds."""
    conv_like = _zero()
    conv_like.update(conv_macs=k.macs, conv_bytes=k.bytes, n_conv=1)
    if k.type == "conv":
        f = dict(conv_like)
        if k.kernel_size > 1 and len(k.output_shape) == 4 and len(k.input_shape) == 4:
            n, _, h, w = k.output_shape
            f["conv_im2col_bytes"] = BYTES_PER_ELEMENT * n * h * w * k.kernel_size ** 2 * (
                k.input_shape[1] // max(k.groups, 1))
        if k.stride > 1:
            f["conv_strided_macs"] = k.macs
        alts = [f]
    elif k.type == "dwconv":
        f = _zero()
        f.update(dw_macs=k.macs, conv_bytes=k.bytes, n_dw=1)
        alts = [f]
    elif k.type == "fc":
        gemv = _zero()
        gemv.update(fc_bytes=k.bytes, n_conv=1)
        alts = [gemv] if _fc_rows(k) <= 1 else [conv_like, gemv]
    else:  # memory-bound (MEMORY_BOUND_TYPES and anything unknown)
        f = _zero()
        f.update(mem_bytes=k.bytes, n_mem=1)
        if k.type == "pool":
            f["pool_window_bytes"] = _window_bytes(k)
        elif k.type in ACTIVATION_TYPES:
            f["act_bytes"] = k.bytes
        alts = [f]
    return alts


def kernel_features(kernels: Sequence[Kernel]) -> dict[str, float]:
    """Summed features of a kernel list (the fit's design-matrix row). Multi-row fc kernels use
    their conv-class vector here; the reference CNNs only have single-row fc."""
    total = _zero()
    for _, alts in kernel_feature_rows(kernels):
        for name, v in alts[0].items():
            total[name] += v
    return total


def _dot(coef: dict[str, float], f: dict[str, float]) -> float:
    return sum(coef[name] * f[name] for name in FEATURES)


# --------------------------------------------------------------------------- predictor


@dataclass
class StandinPredictor:
    """A stand-in latency predictor for one device (implements ``latency.base.Predictor``)."""

    device_key: str
    coefficients: dict[str, float] = field(default_factory=dict)  # fitted devices
    roofline: dict | None = None  # a100
    error_note: str = ""
    version: str = ""
    provenance: str = STANDIN
    pricing: str = DEFAULT_PRICING  # device | nnmeter (see the module docstring)

    @property
    def name(self) -> str:
        suffix = "" if self.pricing == "device" else f"+{self.pricing}-pricing"
        return f"standin/{self.device_key}{suffix}"

    def kernel_ms(self, k: Kernel, alts: list[dict[str, float]] | None = None) -> float:
        """Latency of one (unfused) kernel."""
        if self.roofline is not None:
            r = self.roofline
            t = max(2.0 * k.macs / r["peak_flops"], k.bytes / r["hbm_bandwidth_Bps"]) + r["kernel_launch_s"]
            return 1e3 * t
        if alts is None and self.pricing == "nnmeter":
            rows = kernel_feature_rows([k], self.pricing, self.device_key)
            alts = rows[0][1] if rows else [_zero()]
        elif alts is None:  # one kernel on its own: no per-model cost
            alts = kernel_alternatives(k)
        return max(_dot(self.coefficients, f) for f in alts)

    def breakdown_ms(self, kernels: Sequence[Kernel]) -> dict[str, float]:
        """Latency per kernel type (fused kernels contribute 0)."""
        out: dict[str, float] = {}
        if self.roofline is not None:  # eager execution: no fusion
            for k in kernels:
                out[k.type] = out.get(k.type, 0.0) + self.kernel_ms(k)
            return out
        for k, alts in kernel_feature_rows(kernels, self.pricing, self.device_key):
            out[k.type] = out.get(k.type, 0.0) + self.kernel_ms(k, alts)
        return out

    def per_kernel_ms(self, kernels: Sequence[Kernel]) -> list[float]:
        """Latency of each kernel of ``kernels`` (aligned with it; 0 where it is fused or, under
        ``pricing="nnmeter"``, where nn-Meter prices nothing). Sums to :meth:`kernels_ms`."""
        if self.roofline is not None:
            return [self.kernel_ms(k) for k in kernels]
        if self.pricing == "nnmeter":
            device = replace(self, pricing="device")
            return [0.0 if v is None else device.kernel_ms(v) for v in nnmeter_kernels(kernels, self.device_key)]
        priced = {id(k): alts for k, alts in kernel_feature_rows(kernels, "device", self.device_key)}
        return [self.kernel_ms(k, priced[id(k)]) if id(k) in priced else 0.0 for k in kernels]

    def kernels_ms(self, kernels: Sequence[Kernel]) -> float:
        return float(sum(self.breakdown_ms(kernels).values()))

    def module_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        ms = self.kernels_ms(trace_kernels(module, tuple(input_shape)))
        return Latency(ms=ms, predictor=self.name, provenance=self.provenance, error_note=self.error_note)


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_standin(device_key: str, constants_path: str | Path | None = None, pricing: str = DEFAULT_PRICING
                 ) -> StandinPredictor:
    """The stand-in for ``device_key`` (one of :data:`DEVICE_KEYS`) under ``pricing`` (:data:`PRICINGS`;
    the roofline ``a100`` has no nn-Meter counterpart and always prices every kernel)."""
    parse_pricing(pricing)
    if device_key not in DEVICE_KEYS:
        raise ValueError(f"unknown stand-in device {device_key!r}; valid keys: {', '.join(DEVICE_KEYS)}")
    if device_key in ROOFLINE_DEVICES:
        return StandinPredictor(
            device_key=device_key, roofline=dict(A100_ROOFLINE), provenance=ROOFLINE_STANDIN,
            error_note="uncalibrated A100 roofline (datasheet constants + launch overhead); "
                       "no reference data, sanity range only",
            # the provenance is in the version so that tables cached under the old "calibrated" label rebuild
            version=_hash(CODE_VERSION, device_key, ROOFLINE_STANDIN, json.dumps(A100_ROOFLINE, sort_keys=True)),
        )
    path = Path(constants_path) if constants_path is not None else CONSTANTS_PATH
    raw = path.read_bytes()
    constants = json.loads(raw)
    try:
        dev = constants["devices"][device_key]
    except KeyError:
        raise ValueError(f"{path} has no constants for {device_key!r}; run `python -m latency.standin cmd=fit`") \
            from None
    coef = {name: float(dev["coefficients"].get(name, 0.0)) for name in FEATURES}  # older files: 8 terms
    note = pricing_note(pricing, device_key)
    # device pricing keeps the version (and table keys) it had before pricings existed
    version = _hash(CODE_VERSION, device_key, raw.decode(), *(() if pricing == "device" else (pricing,)))
    return StandinPredictor(device_key=device_key, coefficients=coef, error_note=_error_note(dev),
                            version=version, provenance=f"{STANDIN}, {note}" if note else STANDIN,
                            pricing=pricing)


def _error_note(dev: dict) -> str:
    """What the stand-in was calibrated on and its held-out error there, for every number's note."""
    loo = dev["loo"]
    note = (f"stand-in LOO MAPE {loo['mape_pct']:.1f}%, {loo['within_10_pct']:.0f}% within +-10% "
            f"vs nn-Meter reference ({loo['n_models']} CNNs)")
    if "measured" in dev:
        cv = dev["measured"]["cv"]
        note += (f"; measured on the device: {cv['folds']}-fold CV MAPE {cv['mape_pct']:.1f}%, "
                 f"{cv['within_10_pct']:.0f}% within +-10% ({cv['n_models']} NAS-Bench-201 nets, 32 px)")
    return note


# --------------------------------------------------------------------------- fitting


def default_reference_csv() -> Path:
    """The reference CSV packaged with ``latency`` (package data); nothing outside the package is read."""
    if not PACKAGED_REFERENCE_CSV.is_file():
        raise FileNotFoundError(f"the packaged reference CSV {PACKAGED_REFERENCE_CSV} is missing: reinstall "
                                "QuadraNAS (it ships as package data) or pass --csv PATH")
    return PACKAGED_REFERENCE_CSV


def read_reference(reference_csv: str | Path | None = None) -> pd.DataFrame:
    """nn-Meter's reference predictions: columns model_name, model_type, predictor, predictor_version,
    latency (ms); only the ``nn-meter-ir`` rows (one per model and predictor)."""
    path = Path(reference_csv) if reference_csv is not None else default_reference_csv()
    df = pd.read_csv(path, skipinitialspace=True, comment="#")
    df.columns = [c.strip() for c in df.columns]
    if "model_type" in df.columns:
        df = df[df["model_type"].astype(str).str.strip() == "nn-meter-ir"]
    df = df.assign(model_name=df["model_name"].astype(str).str.strip(),
                   predictor=df["predictor"].astype(str).str.strip(),
                   latency=df["latency"].astype(float))
    return df.reset_index(drop=True)


@functools.cache
def _reference_feature_row(name: str) -> tuple[float, ...]:
    from latency.reference_nets import build

    f = kernel_features(trace_kernels(build(name), REFERENCE_INPUT_SHAPE))
    return tuple(f[k] for k in FEATURES)


def reference_features(models: Iterable[str]) -> pd.DataFrame:
    """Feature rows of the reference CNNs (traced at 1x3x224x224; cached per process)."""
    models = list(models)
    return pd.DataFrame([_reference_feature_row(m) for m in models], index=models, columns=list(FEATURES))


def measured_features(device_key: str, rows: int | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """Feature rows and measured latency (ms) of the packaged NAS-Bench-201 half measured on ``device_key``
    (:mod:`latency.nb201`; the first ``rows`` rows, all by default), indexed by nn-Meter's model id."""
    from latency.nb201 import fold_cell, parse_arch, read_measured

    df = read_measured(MEASURED_KEYS[device_key])
    df = df if rows is None else df.head(rows)
    feats = [_nb201_feature_row(fold_cell(parse_arch(a))) for a in df["arch_str"]]
    ids = df["id"].astype(int).to_numpy()
    return (pd.DataFrame(feats, index=ids, columns=list(FEATURES)),
            pd.Series(df["measured_ms"].to_numpy(dtype=float), index=ids, name="measured_ms"))


@functools.cache
def _nb201_feature_row(folded) -> tuple[float, ...]:
    from latency.nb201 import INPUT_SHAPE, build_folded

    f = kernel_features(trace_kernels(build_folded(folded), INPUT_SHAPE))
    return tuple(f[k] for k in FEATURES)


def solve_relative(X: np.ndarray, y: np.ndarray, lower: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """min sum((weight * (X c - y) / y)^2) s.t. c >= lower: scipy's least_squares (trust-region reflective) on
    column-scaled X; the problem is linear, so the Jacobian is constant."""
    from scipy.optimize import least_squares

    w = np.ones_like(y) if weight is None else weight
    scale = X.max(axis=0)
    scale[scale <= 0] = 1.0
    A = (X / scale) * (w / y)[:, None]
    lb = lower * scale
    res = least_squares(lambda c: A @ c - w, lb + 0.1, jac=lambda c: A, bounds=(lb, np.inf), method="trf",
                        ftol=1e-12, xtol=1e-12, gtol=1e-12)
    return np.maximum(res.x, lb) / scale


def _errors(frame: pd.DataFrame, truth: str, cols: Sequence[str]) -> pd.DataFrame:
    for c in cols:
        frame[c.replace("_ms", "_error_pct")] = 100.0 * (frame[c] - frame[truth]) / frame[truth]
    return frame


def fit_device(features: pd.DataFrame, reference_ms: pd.Series, lower: dict[str, float] | None = None,
               terms: Sequence[str] = BASE_FEATURES, measured: tuple[pd.DataFrame, pd.Series] | None = None,
               folds: int = CV_FOLDS, seed: int = 0) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Fit one device on the cost terms ``terms`` (the others are 0) to the reference CNNs and, if given, the
    ``measured`` (features, ms) rows at once, on the relative error; with measured rows each source carries half
    of the total weight. Returns (coefficients, reference frame with fit and leave-one-out predictions, measured
    frame with fit and ``folds``-fold cross-validated predictions; empty without measured rows)."""
    names = list(reference_ms.index)
    terms = [f for f in FEATURES if f in terms]
    Xr = features.loc[names, terms].to_numpy(dtype=float)
    yr = reference_ms.to_numpy(dtype=float)
    Xm = measured[0][terms].to_numpy(dtype=float) if measured is not None else np.zeros((0, len(terms)))
    ym = measured[1].to_numpy(dtype=float) if measured is not None else np.zeros(0)
    wr = np.full(len(yr), math.sqrt(len(ym) / len(yr)) if len(ym) else 1.0)
    lb = np.array([(lower or {}).get(f, 0.0) for f in terms])

    def solve(keep_r: np.ndarray, keep_m: np.ndarray) -> np.ndarray:
        return solve_relative(np.vstack([Xr[keep_r], Xm[keep_m]]), np.concatenate([yr[keep_r], ym[keep_m]]), lb,
                      np.concatenate([wr[keep_r], np.ones(int(keep_m.sum()))]))

    all_r, all_m = np.ones(len(yr), bool), np.ones(len(ym), bool)
    coef = solve(all_r, all_m)
    loo = np.full(len(yr), np.nan)
    if len(yr) >= 3:
        for i in range(len(yr)):
            loo[i] = Xr[i] @ solve(np.arange(len(yr)) != i, all_m)
    frame = _errors(pd.DataFrame({"model": names, "reference_ms": yr, "fit_ms": Xr @ coef, "loo_ms": loo}),
                    "reference_ms", ("fit_ms", "loo_ms"))
    cv = np.full(len(ym), np.nan)
    fold = np.random.default_rng(seed).permutation(len(ym)) % folds
    for f in range(folds if len(ym) >= folds else 0):
        cv[fold == f] = Xm[fold == f] @ solve(all_r, fold != f)
    ids = measured[1].index if measured is not None else []
    mframe = _errors(pd.DataFrame({"id": ids, "measured_ms": ym, "fit_ms": Xm @ coef, "cv_ms": cv}),
                     "measured_ms", ("fit_ms", "cv_ms"))
    fitted = dict(zip(terms, map(float, coef), strict=True))
    return {f: fitted.get(f, 0.0) for f in FEATURES}, frame, mframe


REPORT_COLUMNS = ("model", "device", "reference_ms", "fit_ms", "loo_ms", "fit_error_pct", "loo_error_pct")
MEASURED_COLUMNS = ("id", "device", "measured_ms", "fit_ms", "cv_ms", "fit_error_pct", "cv_error_pct")


def loo_summary(report: pd.DataFrame) -> pd.DataFrame:
    """Per device: number of models, LOO MAPE, share within +-10% (LOO), worst LOO error, fit MAPE."""
    rows = []
    for dev, g in report.groupby("device", sort=False):
        e = g["loo_error_pct"].abs()
        rows.append({"device": dev, "n_models": len(g), "loo_mape_pct": float(e.mean()),
                     "loo_within_10_pct": float(100.0 * (e <= 10.0).mean()),
                     "loo_max_abs_error_pct": float(e.max()),
                     "fit_mape_pct": float(g["fit_error_pct"].abs().mean())})
    return pd.DataFrame(rows)


def accuracy(predicted_ms: np.ndarray, truth_ms: np.ndarray) -> dict[str, float]:
    """MAPE, share within +-10%, worst error (%), Spearman rank correlation, median predicted / truth."""
    from scipy.stats import spearmanr

    p, t = np.asarray(predicted_ms, dtype=float), np.asarray(truth_ms, dtype=float)
    e = np.abs(100.0 * (p - t) / t)
    rho = float(spearmanr(p, t)[0]) if len(t) > 2 else math.nan
    return {"n_models": len(t), "mape_pct": float(e.mean()), "within_10_pct": float(100.0 * (e <= 10.0).mean()),
            "max_abs_error_pct": float(e.max()), "spearman": rho, "median_ratio": float(np.median(p / t))}


def fit_all(reference_csv: str | Path | None = None, *, models: Sequence[str] | None = None,
            devices: Sequence[str] | None = None, measured_rows: int | None = None, folds: int = CV_FOLDS
            ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """:func:`fit_standins` and the per-network frame of the measured rows (columns :data:`MEASURED_COLUMNS`:
    in-sample fit and ``folds``-fold cross-validated predictions); ``measured_rows`` limits those rows (the
    first n; ``0``: fit the reference CNNs alone)."""
    from latency.reference_nets import REFERENCE_NETS

    path = Path(reference_csv) if reference_csv is not None else default_reference_csv()
    ref = read_reference(path)
    devices = [d for d in FITTED_DEVICES if d in set(ref["predictor"])] if devices is None else list(devices)
    wanted = [m for m in REFERENCE_NETS if m in set(ref["model_name"])] if models is None else list(models)
    unknown = sorted(set(wanted) - set(REFERENCE_NETS))
    if unknown:
        raise ValueError(f"no PyTorch builder for reference model(s) {unknown}")
    feats = reference_features(wanted)
    constants: dict = {
        "schema": 2,
        "code_version": CODE_VERSION,
        "provenance": PROVENANCE,
        "fitted_from": path.name,
        "measured_from": {},
        "fitted_on": _dt.date.today().isoformat(),
        "input_shape": list(REFERENCE_INPUT_SHAPE),
        "solver": "scipy.optimize.least_squares (trf), relative error, coefficients >= lower bounds",
        "cost_model": FEATURE_DOC,
        "devices": {},
    }
    frames, mframes = [], []
    for dev in devices:
        if dev not in FITTED_DEVICES:
            raise ValueError(f"cannot fit {dev!r}; fitted devices: {', '.join(FITTED_DEVICES)}")
        r = ref[ref["predictor"] == dev].set_index("model_name")["latency"]
        r = r[r.index.isin(wanted)]
        r = r.loc[[m for m in wanted if m in r.index]]
        lower = {"mem_bytes": 1e3 / PEAK_DRAM_BANDWIDTH[dev]}
        measured = (measured_features(dev, measured_rows) if dev in MEASURED_KEYS and measured_rows != 0
                    else None)
        terms = (DEVICE_FEATURES if measured is not None else REFERENCE_ONLY_FEATURES).get(dev, BASE_FEATURES)
        coef, frame, mframe = fit_device(feats, r, lower, terms, measured, folds)
        frame.insert(1, "device", dev)
        mframe.insert(1, "device", dev)
        frames.append(frame)
        s = loo_summary(frame).iloc[0]
        entry = {
            "coefficients": coef,
            "lower_bounds": lower,
            "terms": list(terms),
            "peak_dram_bandwidth_Bps": PEAK_DRAM_BANDWIDTH[dev],
            "loo": {"n_models": int(s.n_models), "mape_pct": round(float(s.loo_mape_pct), 2),
                    "within_10_pct": round(float(s.loo_within_10_pct), 1),
                    "max_abs_error_pct": round(float(s.loo_max_abs_error_pct), 2)},
            "fit_mape_pct": round(float(s.fit_mape_pct), 2),
            "loo_error_pct": {m: round(float(e), 2) for m, e in zip(frame.model, frame.loo_error_pct,
                                                                     strict=True)},
        }
        if measured is not None:
            from latency.nb201 import measured_csv

            mframes.append(mframe)
            constants["measured_from"][dev] = measured_csv(MEASURED_KEYS[dev]).name
            cv = accuracy(mframe["cv_ms"].to_numpy(), mframe["measured_ms"].to_numpy())
            entry["measured"] = {
                "source": measured_csv(MEASURED_KEYS[dev]).name, "input_shape": [1, 3, 32, 32],
                "weights": {"reference": round(math.sqrt(len(mframe) / len(frame)), 4), "measured": 1.0},
                "cv": {"folds": folds, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in cv.items()}},
                "fit_mape_pct": round(float(mframe["fit_error_pct"].abs().mean()), 2),
            }
        constants["devices"][dev] = entry
    constants["a100"] = {**A100_ROOFLINE, "fitted": False}
    report = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REPORT_COLUMNS))
    mreport = (pd.concat(mframes, ignore_index=True) if mframes else pd.DataFrame(columns=list(MEASURED_COLUMNS)))
    return constants, report[list(REPORT_COLUMNS)], mreport[list(MEASURED_COLUMNS)]


def fit_standins(reference_csv: str | Path | None = None, *, models: Sequence[str] | None = None,
                 devices: Sequence[str] | None = None, measured_rows: int | None = None) -> tuple[dict, pd.DataFrame]:
    """Fit the stand-ins: every device to nn-Meter's reference predictions, the A76 and the VPU also to the
    measured NAS-Bench-201 half at once (``measured_rows``: its first n rows; 0: none).

    Returns ``(constants, report)``: the JSON-ready constants (coefficients, LOO stats per device, the measured
    rows' k-fold error, provenance) and a per-model report of the reference CNNs with columns
    :data:`REPORT_COLUMNS`.
    """
    constants, report, _ = fit_all(reference_csv, models=models, devices=devices, measured_rows=measured_rows)
    return constants, report


def write_constants(constants: dict, path: str | Path = CONSTANTS_PATH) -> Path:
    """Write the constants JSON atomically."""
    return atomic_write_text(path, json.dumps(constants, indent=2) + "\n")


# --------------------------------------------------------------------------- CLI


def _print_report(constants_path: Path, reference_csv: Path | None) -> None:
    constants = json.loads(constants_path.read_text())
    ref = read_reference(reference_csv)
    devices = list(constants["devices"])
    from latency.reference_nets import REFERENCE_NETS, build

    models = [m for m in dict.fromkeys(ref["model_name"]) if m in REFERENCE_NETS]
    traced = {m: trace_kernels(build(m), REFERENCE_INPUT_SHAPE) for m in models}
    pd.set_option("display.width", 140)
    rows = []
    for dev in devices:
        pred = load_standin(dev, constants_path)
        loo_err = constants["devices"][dev].get("loo_error_pct", {})
        r = ref[ref["predictor"] == dev].set_index("model_name")["latency"]
        for m in models:
            if m not in r.index:
                continue
            ours = pred.kernels_ms(traced[m])
            rows.append({"model": m, "device": dev, "reference_ms": r[m], "ours_ms": ours,
                         "error_pct": 100.0 * (ours - r[m]) / r[m], "loo_error_pct": loo_err.get(m, math.nan)})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print()
    print(f"Leave-one-out summary ({constants['provenance']}; fitted {constants['fitted_on']} "
          f"from {constants['fitted_from']}):")
    for dev in devices:
        loo = constants["devices"][dev]["loo"]
        print(f"  {dev:26s} LOO MAPE {loo['mape_pct']:5.1f}%  within +-10%: {loo['within_10_pct']:5.1f}%  "
              f"worst {loo['max_abs_error_pct']:5.1f}%  (n={loo['n_models']})")
    for dev in devices:
        if "measured" in constants["devices"][dev]:
            cv = constants["devices"][dev]["measured"]["cv"]
            print(f"  {dev:26s} measured NAS-Bench-201 {cv['folds']}-fold CV MAPE {cv['mape_pct']:5.1f}%  "
                  f"within +-10%: {cv['within_10_pct']:5.1f}%  Spearman {cv['spearman']:.3f}  "
                  f"median ratio {cv['median_ratio']:.3f}  (n={cv['n_models']})")
    print("  a100                       uncalibrated roofline (not fitted)")


CMDS = ("report", "fit")


def run(cfg: DictConfig) -> int:
    """``cmd=report`` or ``cmd=fit`` (``conf/tools/standin.yaml``); a bad value is one line on stderr, exit 2."""
    if cfg.cmd not in CMDS:
        print(f"error: cmd={cfg.cmd} is invalid; valid: {', '.join(CMDS)}", file=sys.stderr)
        return 2
    csv = Path(cfg.csv) if cfg.csv else None
    constants = Path(cfg.constants) if cfg.constants else CONSTANTS_PATH
    if cfg.cmd == "fit":
        fitted, report = fit_standins(csv)
        out = write_constants(fitted, constants)
        print(loo_summary(report).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        for dev, d in fitted["devices"].items():
            if "measured" in d:
                cv = d["measured"]["cv"]
                print(f"{dev}: measured {cv['folds']}-fold CV MAPE {cv['mape_pct']:.1f}%, "
                      f"{cv['within_10_pct']:.1f}% within +-10%, Spearman {cv['spearman']:.3f}")
        print(f"wrote {out}")
    else:
        _print_report(constants, csv)
    return 0


@hydra.main(version_base=None, config_path="pkg://conf.tools", config_name="standin")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
