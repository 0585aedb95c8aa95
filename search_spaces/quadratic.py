"""Quadratic layers (QuadraLib / QuadraNet).

* :class:`QuadDWConv2d` -- quadratic depthwise convolution
  ``y = DWa(x) * DWb(x) + DWc(x)`` with bias, as three separate depthwise convs, as one grouped
  conv with 3C outputs, or as one batched matmul over the pixels of a small map (``dense``); the
  default ``impl="auto"`` takes the grouped conv where it measured faster (CPU inference on small
  inputs) and the dense matmul where it times faster on the machine it runs on (CPU training on small
  maps, timed once per shape and cached).
  ``memory_saving=True`` uses :class:`QuadDWFunction`, which saves only the input and
  the weights and recomputes the two projections in backward (QuadraLib's "hybrid
  back-propagation"; QuadraNet paper Eq. 8).
* :class:`QuadLinear` -- quadratic neuron over features, low-rank form
  ``(Wa x) * (Wb x) + Wc x`` and QuadraLib's types T2 ``W x^2``, T3 ``(W x)^2``,
  T4 ``(Wa x) * (Wb x)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.io import atomic_write_text

log = logging.getLogger(__name__)

NEURON_TYPES = ("lowrank", "t2", "t3", "t4")


IMPLS = ("auto", "separate", "grouped", "dense")
DEFAULT_IMPL = "auto"
# auto picks the grouped conv only where it measured faster (experiments/results/quad_conv_speed*.md): CPU
# inference of small maps, where the per-call overhead of three convs dominates
AUTO_GROUPED_MAX_NUMEL = 6272  # N*C*H*W of the input, e.g. 1x32x14x14 or 1x128x7x7
AUTO_GROUPED_MAX_KERNEL = 5
AUTO_GROUPED_MAX_CHANNELS = 128  # 1x256x2x2 was slower grouped in both measured runs (1.02-1.24x)
# auto times the dense matmul against the convs in training only on maps this small: its cost grows as (HW)^2
DENSE_MAX_PIXELS = 64
TIMING_REPEATS = 5  # auto's timing: runs of each path (after one warm-up), interleaved; the median decides


def _tracing() -> bool:
    """Export, compilation, scripting or a torch-function-mode tracer (the latency cost model) is running:
    the graph must stay the deployed one (three depthwise convs)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled())


def auto_grouped(x: torch.Tensor, kernel_size: int, needs_grad: bool) -> bool:
    """Whether ``impl="auto"`` runs the grouped conv for input ``x``: eager CPU inference (``needs_grad``
    false: no gradient will flow through this call), a small input (``x.numel() <= AUTO_GROUPED_MAX_NUMEL``,
    at most ``AUTO_GROUPED_MAX_CHANNELS`` channels) and ``kernel_size <= AUTO_GROUPED_MAX_KERNEL``."""
    if needs_grad or _tracing():  # tracing first: a traced x.numel() would be a tensor
        return False
    return (x.device.type == "cpu" and x.numel() <= AUTO_GROUPED_MAX_NUMEL and x.shape[1] <= AUTO_GROUPED_MAX_CHANNELS
            and kernel_size <= AUTO_GROUPED_MAX_KERNEL)


def auto_dense(x: torch.Tensor, kernel_size: int, needs_grad: bool) -> bool:
    """Whether ``impl="auto"`` runs the dense matmul for input ``x``: eager CPU training (``needs_grad``) of a
    map of at most :data:`DENSE_MAX_PIXELS` pixels where the dense form timed faster than the three depthwise
    convs on this machine (:func:`dense_is_faster`, once per shape, kernel, dtype and thread count; the choice
    is cached on disk like the latency tables). Torch's depthwise weight gradient is slow on small maps: 6-18x
    the dense form on an AMD EPYC, about 1x-1.7x on an Intel Xeon (``python -m experiments.train_speed``)."""
    if not needs_grad or _tracing() or x.device.type != "cpu":
        return False
    h, w = x.shape[-2:]
    if h * w > DENSE_MAX_PIXELS:
        return False
    dtype = str(x.dtype).removeprefix("torch.")
    key = f"{'x'.join(map(str, x.shape))}-k{kernel_size}-{dtype}-t{torch.get_num_threads()}"
    timed = _timed_choices()
    if key not in timed:
        timed[key] = dense_is_faster(tuple(x.shape), kernel_size, x.dtype)
        atomic_write_text(_timings_path(), json.dumps(timed, indent=1, sort_keys=True))
    return timed[key]


def dense_is_faster(shape: tuple[int, ...], kernel_size: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether a forward and backward of :func:`dense_quad_dw` on an input of ``shape`` takes less time than
    the three depthwise convs: medians of :data:`TIMING_REPEATS` interleaved runs after one warm-up, on random
    inputs from a private generator (the training's random streams are not touched). It runs in a thread of its
    own, so the caller's thread-local autograd state (saved-tensor hooks, autocast, grad mode) neither sees
    nor shapes the timing."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_time_dense, shape, kernel_size, dtype).result()


def _time_dense(shape: tuple[int, ...], kernel_size: int, dtype: torch.dtype) -> bool:
    g = torch.Generator().manual_seed(0)
    c, k = shape[1], kernel_size
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    ws = [torch.randn((c, 1, k, k) if i % 2 == 0 else (c,), generator=g, dtype=dtype, requires_grad=True)
          for i in range(6)]

    def separate():
        (F.conv2d(x, ws[0], ws[1], padding=k // 2, groups=c) * F.conv2d(x, ws[2], ws[3], padding=k // 2, groups=c)
         + F.conv2d(x, ws[4], ws[5], padding=k // 2, groups=c)).sum().backward()

    def dense():
        dense_quad_dw(x, *ws).sum().backward()

    times: dict[str, list[float]] = {"separate": [], "dense": []}
    for i in range(TIMING_REPEATS + 1):
        for name, fn in (("separate", separate), ("dense", dense)):
            t0 = time.perf_counter()
            fn()
            if i:  # the first run of each warms up
                times[name].append(time.perf_counter() - t0)
    sep, den = (statistics.median(times[n]) for n in ("separate", "dense"))
    log.info("quad_impl=auto: %s for training on %s k%d (%s): dense %.3f ms, separate %.3f ms per forward and "
             "backward, timed once on this machine", "dense" if den < sep else "separate",
             "x".join(map(str, shape)), k, dtype, 1e3 * den, 1e3 * sep)
    return den < sep


_TIMED: dict[str, dict[str, bool]] = {}  # the cache file's choices, read once per path


def _timings_path() -> Path:
    """This machine's timed choices: one file per CPU model and torch version, under ``QUADRANAS_CACHE``."""
    root = Path(os.environ.get("QUADRANAS_CACHE", Path.home() / ".cache" / "quadranas"))
    machine = hashlib.sha1(f"{_cpu_model()}|{torch.__version__}".encode()).hexdigest()[:12]
    return root / "quad_impl" / f"{machine}.json"


def _timed_choices() -> dict[str, bool]:
    path = _timings_path()
    if str(path) not in _TIMED:
        try:
            _TIMED[str(path)] = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError):  # an unreadable cache is timed again
            _TIMED[str(path)] = {}
    return _TIMED[str(path)]


@functools.cache
def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=128)
def _dense_taps(h: int, w: int, k: int, device: torch.device | None = None) -> torch.Tensor:
    """(H*W, H*W) index of the kernel tap linking output pixel s to input pixel t of a stride-1 'same'
    k x k convolution: ``di * k + dj``, or ``k * k`` (a zero appended to the taps) where t is out of reach.
    Cached per device, so a GPU forward does not copy the index to the device every time."""
    if device is not None and device.type != "cpu":
        with torch.inference_mode(False):
            return _dense_taps(h, w, k).to(device)
    p = k // 2
    with torch.inference_mode(False):  # cached: must stay usable by autograd even if first built in inference
        i, j = torch.arange(h).view(h, 1, 1, 1), torch.arange(w).view(1, w, 1, 1)
        di, dj = torch.arange(h).view(1, 1, h, 1) - i + p, torch.arange(w).view(1, 1, 1, w) - j + p
        reach = (di >= 0) & (di < k) & (dj >= 0) & (dj < k)
        return torch.where(reach, di * k + dj, k * k).view(h * w, h * w)


def dense_quad_dw(x, wa, ba, wb, bb, wc, bc) -> torch.Tensor:
    """``DWa(x) * DWb(x) + DWc(x)`` (stride 1, 'same' padding) as one batched matmul per channel: each depthwise
    conv of an H x W map is an (HW x HW) matrix built from its k x k taps, the three stacked into (3HW x HW),
    applied to the (HW x N) pixels of that channel. Exact up to float rounding; autograd gives the weight
    gradient as a matmul plus a scatter-add, which on small maps is far cheaper than torch's depthwise
    weight-gradient kernel. Cost grows as (HW)^2, so :func:`auto_dense` uses it only on small maps.
    The output is channels-last in memory (NCHW shape)."""
    n, c, h, w = x.shape
    k = wa.shape[-1]
    taps = torch.stack((wa, wb, wc), 1).reshape(c, 3, k * k)
    mats = F.pad(taps, (0, 1))[:, :, _dense_taps(h, w, k, x.device)]  # (C, 3, HW, HW)
    cols = x.reshape(n, c, h * w).permute(1, 2, 0)  # (C, HW, N)
    out = torch.bmm(mats.reshape(c, 3 * h * w, h * w), cols).view(c, 3, h * w, n)
    a, b, cc = (out + torch.stack((ba, bb, bc), 1).view(c, 3, 1, 1)).unbind(1)  # unbind: no zero-filled grads
    y = torch.addcmul(cc, a, b)  # (C, HW, N)
    return y.permute(2, 1, 0).reshape(n, h, w, c).permute(0, 3, 1, 2)


def _grouped_params(wa, ba, wb, bb, wc, bc):
    """The three depthwise convs as one conv with groups=C and 3C outputs: output channel 3i+j is
    branch j (a, b, c) of channel i, so the weight is the three weights interleaved per channel."""
    c, _, kh, kw = wa.shape
    return torch.stack((wa, wb, wc), 1).reshape(3 * c, 1, kh, kw), torch.stack((ba, bb, bc), 1).reshape(3 * c)


def _grouped_branches(x, w3, b3, stride: int, padding: int):
    """``(a, b, c)`` from one grouped conv (strided views of its interleaved output)."""
    y = F.conv2d(x, w3, b3, stride, padding, groups=x.shape[1])
    y = y.view(y.shape[0], x.shape[1], 3, *y.shape[2:])
    return y[:, :, 0], y[:, :, 1], y[:, :, 2]


class QuadDWFunction(torch.autograd.Function):
    """``dw(x, wa, ba) * dw(x, wb, bb) + dw(x, wc, bc)`` saving only x and the weights.

    Backward recomputes ``a = DWa(x)`` and ``b = DWb(x)``: the gradient reaching DWa is
    ``g * b`` and the one reaching DWb is ``g * a``; DWc receives ``g`` directly.
    ``grouped=True`` runs the three convs as one grouped conv, in forward and in backward.
    """

    @staticmethod
    def forward(ctx, x, wa, ba, wb, bb, wc, bc, stride: int, padding: int, grouped: bool = False):
        groups = x.shape[1]
        if grouped:
            a, b, c = _grouped_branches(x, *_grouped_params(wa, ba, wb, bb, wc, bc), stride, padding)
        else:
            a = F.conv2d(x, wa, ba, stride, padding, groups=groups)
            b = F.conv2d(x, wb, bb, stride, padding, groups=groups)
            c = F.conv2d(x, wc, bc, stride, padding, groups=groups)
        y = torch.addcmul(c, a, b)
        ctx.save_for_backward(x, wa, ba, wb, bb, wc, bc)
        ctx.conf = (stride, padding, grouped)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, wa, ba, wb, bb, wc, bc = ctx.saved_tensors
        stride, padding, grouped = ctx.conf
        groups = x.shape[1]
        need_x = ctx.needs_input_grad[0]
        if grouped:
            w3, b3 = _grouped_params(wa, ba, wb, bb, wc, bc)
            with torch.no_grad():
                a, b, _ = _grouped_branches(x, w3, b3, stride, padding)
            g3 = torch.stack((grad_y * b, grad_y * a, grad_y), 2).flatten(1, 2)
            gx, gw, gb = torch.ops.aten.convolution_backward(
                g3, x, w3, [w3.shape[0]], [stride, stride], [padding, padding], [1, 1],
                False, [0, 0], groups, [need_x, True, True],
            )
            gw, gb = gw.view(groups, 3, *gw.shape[1:]), gb.view(groups, 3)
            grads = [t for j in range(3) for t in (gw[:, j], gb[:, j])]
            return (gx if need_x else None, *grads, None, None, None)
        with torch.no_grad():
            a = F.conv2d(x, wa, ba, stride, padding, groups=groups)
            b = F.conv2d(x, wb, bb, stride, padding, groups=groups)
        grads_x, grads = [], []
        for w, g in ((wa, grad_y * b), (wb, grad_y * a), (wc, grad_y)):
            gx, gw, gb = torch.ops.aten.convolution_backward(
                g, x, w, [w.shape[0]], [stride, stride], [padding, padding], [1, 1],
                False, [0, 0], groups, [need_x, True, True],
            )
            grads_x.append(gx)
            grads += [gw, gb]
        grad_x = grads_x[0] + grads_x[1] + grads_x[2] if need_x else None
        return (grad_x, *grads, None, None, None)


class QuadDWConv2d(nn.Module):
    """Quadratic depthwise convolution ``DWa(x) * DWb(x) + DWc(x)`` (any odd kernel).

    ``impl`` chooses how the three depthwise convs run; outputs (equal within float rounding), gradients and
    the state_dict (``dwa``/``dwb``/``dwc``) are the same either way, so checkpoints load into all of them, and
    ``impl`` may be changed on a built module:

    * ``"separate"``: three depthwise convs (channel multiplier 1), as in the official code.
    * ``"grouped"``: one conv with ``groups=C`` and 3C outputs whose interleaved output is split into the
      three branches; its weight is assembled from the three per call.
    * ``"dense"``: one batched matmul per channel over the map's pixels (:func:`dense_quad_dw`; stride 1 only).
    * ``"auto"`` (default): dense in CPU training of small maps where it times faster on this machine
      (:func:`auto_dense`, timed once per shape and cached), grouped in CPU inference where it measured faster
      (:func:`auto_grouped`), else separate.

    Measured (``python -m experiments.diagnostics.quad_conv_speed``, ``experiments/results/quad_conv_speed*.md``;
    2-core AMD EPYC VM shared with other jobs at load 6-8, torch 2.13 CPU, NCHW, interleaved medians; ratio = grouped /
    separate time, 1 thread, rows not dominated by other load; two runs: the committed tables first, the
    earlier run's in git history, commit 01c7ef0):

    * QuadraNet36-T shapes (C=64/128/256/512 at 56/28/14/7), k 3/5/7: forward at batch 1 1.8-7.4x (earlier
      run 2.2-7.9x), forward at batch 32 1.4-7.4x (median 3.9x; earlier 1.8-7.1x), forward + backward at
      batch 32 0.89-4.5x (median 1.37x; earlier 1.0-4.4x). By fastest repeats grouped was slower in all 36
      one-thread configurations of both runs (1.14-8.6x; earlier 1.03-12.2x), presumably because the fast
      depthwise kernels handle channel multiplier 1 only. The official code's "4-15x slower" holds in
      direction; by medians inference was 1.4-7.9x slower here, training 0.9-4.5x.
    * The 28x28 training maps (C=16..256 at 14..2): forward at batch 1 0.63-1.41x (median 0.95x; earlier
      0.49-1.28x, median 0.82x), where per-call overhead dominates; with k <= 5, <= 6272 input elements and
      C <= 128: 0.63-0.99x (earlier 0.61-0.92x), grouped faster in all 8 such configurations of both runs.
      Forward + backward at batch 128: 0.66-8.7x (median 1.37x; earlier median 1.39x).

    Hence ``auto``: grouped for CPU inference with k <= 5, C <= 128 and at most 6272 input elements,
    separate otherwise (training chooses between separate and dense only). 2 threads gave no trustworthy
    numbers on that loaded 2-core machine (most 2-thread rows were dominated by other jobs; see the results
    files). Unmeasured on CUDA, where ``auto`` keeps the separate convs.
    """

    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1, memory_saving: bool = False,
                 impl: str | None = None):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        impl = impl or DEFAULT_IMPL
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
        pad = kernel_size // 2
        self.dwa, self.dwb, self.dwc = (
            nn.Conv2d(channels, channels, kernel_size, stride, pad, groups=channels) for _ in range(3)
        )
        self.stride, self.padding, self.memory_saving, self.impl = stride, pad, memory_saving, impl

    def _weights(self) -> tuple[torch.Tensor, ...]:
        return (self.dwa.weight, self.dwa.bias, self.dwb.weight, self.dwb.bias, self.dwc.weight, self.dwc.bias)

    def impl_for(self, x: torch.Tensor) -> str:
        """The implementation a forward on ``x`` runs now: ``separate``, ``grouped`` or ``dense``."""
        if self.impl != "auto":
            return self.impl
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        k = self.dwa.kernel_size[0]
        if self.stride == 1 and not self.memory_saving and auto_dense(x, k, needs_grad):
            return "dense"
        return "grouped" if auto_grouped(x, k, needs_grad) else "separate"

    def uses_grouped(self, x: torch.Tensor) -> bool:
        """Whether a forward on ``x`` now runs the grouped conv."""
        return self.impl_for(x) == "grouped"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.impl_for(x)
        if impl == "dense":
            if self.stride != 1:
                raise ValueError(f"impl='dense' needs stride 1, got {self.stride}")
            return dense_quad_dw(x, *self._weights())
        grouped = impl == "grouped"
        if self.memory_saving and torch.is_grad_enabled():
            return QuadDWFunction.apply(x, *self._weights(), self.stride, self.padding, grouped)
        if grouped:
            a, b, c = _grouped_branches(x, *_grouped_params(*self._weights()), self.stride, self.padding)
            return torch.addcmul(c, a, b)
        return self.dwa(x) * self.dwb(x) + self.dwc(x)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, memory_saving={self.memory_saving}"


def set_impl(module: nn.Module, impl: str) -> int:
    """Switch every :class:`QuadDWConv2d` in ``module`` to ``impl`` (one of :data:`IMPLS`); returns how many.
    ``impl="separate"`` everywhere is the path every run took before ``dense`` existed."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    convs = [m for m in module.modules() if isinstance(m, QuadDWConv2d)]
    for m in convs:
        m.impl = impl
    return len(convs)


class QuadLinear(nn.Module):
    """Quadratic neuron layer over the last dimension.

    ``lowrank``: (Wa x)(Wb x) + Wc x   ``t2``: W x^2 + Wc x   ``t3``: (W x)^2 + Wc x
    ``t4``: (Wa x)(Wb x). Types other than t4 keep a linear term so they can start as a
    plain linear layer (QuadraLib notes; T1 x^T W x is left out: n^2 weights per neuron).
    """

    def __init__(self, in_features: int, out_features: int, neuron: str = "lowrank", bias: bool = True):
        super().__init__()
        if neuron not in NEURON_TYPES:
            raise ValueError(f"unknown neuron type {neuron!r}; valid: {', '.join(NEURON_TYPES)}")
        self.neuron = neuron
        self.wa = nn.Linear(in_features, out_features, bias=bias)
        self.wb = nn.Linear(in_features, out_features, bias=bias) if neuron in ("lowrank", "t4") else None
        self.wc = nn.Linear(in_features, out_features, bias=bias) if neuron != "t4" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.neuron == "t2":
            quad = self.wa(x * x)
        elif self.neuron == "t3":
            quad = self.wa(x) ** 2
        else:
            quad = self.wa(x) * self.wb(x)
        return quad if self.wc is None else quad + self.wc(x)
