"""Trace a module into the list of kernels a deployment runtime would execute.

:func:`trace_kernels` runs one forward pass (``torch.no_grad``, eval mode, the
module's training flag restored afterwards) and records every *leaf* operation as a
:class:`Kernel`. Two mechanisms cooperate:

* forward hooks on standard leaf modules (matched by *exact* type, so a subclass
  with its own ``forward`` -- e.g. a channels-first ``LayerNorm2d`` -- is traced
  through the functional path instead): Conv2d, Linear, BatchNorm, LayerNorm,
  GroupNorm, GELU, activations, pooling, ChannelShuffle, Softmax. While such a
  module runs, a depth counter suppresses the functional recorder, so the
  ``F.conv2d`` inside ``nn.Conv2d`` is not counted twice. Dropout/Identity/Flatten
  are hooked as zero-cost (nothing inside them is recorded).
* a :class:`torch.overrides.TorchFunctionMode` that sees every torch function /
  tensor method called outside hooked modules: ``+ - * /``, ``torch.cat``,
  ``permute``/``transpose``, ``F.layer_norm``, ``F.gelu``, ``F.conv2d``,
  ``F.linear``/``matmul``, pooling, ``mean`` over H,W, activations, ...
  Inside the mode's handler torch disables the mode, so a functional op that calls
  other torch functions (``F.layer_norm`` -> ``torch.layer_norm``) is seen once.

What is counted
---------------
* ``macs``: multiply-accumulates of ``conv``/``dwconv``/``fc`` only (the usual
  convention; elementwise ops, norms and pools have ``macs == 0``).
* ``params``: weights + biases of conv/fc; affine parameters (and running stats)
  of norms; size of broadcast parameter operands (e.g. layer-scale ``gamma``).
* ``bytes``: float32 bytes read + written by the kernel *as a standalone op*:
  every tensor operand (activations and weights) read once plus the output written
  once. Python scalars are free. ``permute``/``transpose`` are views in PyTorch but
  a real copy in deployment runtimes, so they are recorded as a read + a write
  (permutations that only move size-1 dims are skipped).
* Zero cost and not recorded: views and shape ops (``view``, ``reshape``,
  ``flatten``, ``squeeze``, ``chunk``/``split``, ``contiguous``, indexing),
  ``dropout`` (eval), padding, tensor creation, and ops whose tensor operands are
  all parameters/buffers (constant-folded at deployment time).
* Unrecognised torch functions are not recorded (their names are kept in
  ``trace_kernels.last_unknown`` for debugging); anything they call internally is
  invisible too, because torch disables the mode inside the handler.

Kernel types: ``conv`` (regular or grouped), ``dwconv`` (groups == in_channels),
``fc`` (linear / matmul), ``pool`` (max/avg, windowed), ``global_pool`` (output
1x1, or a mean over H,W), ``bn``, ``relu`` (any pointwise activation; ``op`` names
which: relu, relu6, hardtanh, hardswish, hardsigmoid, sigmoid, silu, tanh, ...),
``add`` (add/sub, residuals), ``mul`` (mul/div/pow/addcmul), ``concat``,
``layernorm`` (layer/group/rms norm), ``gelu``, ``transpose`` (permute/transpose),
``channel_shuffle``, ``softmax``, ``reduce`` (other reductions), ``resize``.

Each kernel also carries integer ids of its input tensors and its output tensor,
so a cost model can detect producer -> consumer chains (conv -> bn -> relu fusion).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

BYTES_PER_ELEMENT = 4  # float32

KERNEL_TYPES = (
    "conv", "dwconv", "fc", "pool", "global_pool", "bn", "relu", "add", "mul", "concat",
    "layernorm", "gelu", "transpose", "channel_shuffle", "softmax", "reduce", "resize",
)


@dataclass(frozen=True)
class Kernel:
    """One executed operation (batch included in the shapes)."""

    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int = 0
    params: int = 0
    bytes: int = 0  # float32 bytes read + written
    kernel_size: int = 0
    stride: int = 1
    groups: int = 1
    op: str = ""  # the concrete op, e.g. "relu6", "hardswish", "permute", "adaptive_avg_pool2d"
    name: str = ""  # qualified module name when recorded by a hook
    in_ids: tuple[int, ...] = field(default=(), repr=False, compare=False)
    out_id: int = field(default=-1, repr=False, compare=False)


# --------------------------------------------------------------------------- helpers


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors in an (arbitrarily nested list/tuple of) argument(s)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        out: list[torch.Tensor] = []
        for o in obj:
            out += _tensors(o)
        return out
    return []


def _first_int(v: Any, default: int = 1) -> int:
    if isinstance(v, (tuple, list)):
        return int(max(v)) if v else default
    return int(v) if v is not None else default


def _norm_name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    return name.strip("_")


_ADD = {"add", "iadd", "radd", "sub", "isub", "rsub"}
_MUL = {"mul", "imul", "rmul", "div", "idiv", "truediv", "itruediv", "rtruediv", "rdiv", "pow", "ipow",
        "square", "addcmul"}
_ACT = {"relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "silu", "tanh", "leaky_relu",
        "elu", "mish", "prelu", "selu", "celu", "softplus", "hardshrink", "clamp", "clip"}
_NORM = {"layer_norm", "group_norm", "rms_norm"}
_CONCAT = {"cat", "concat", "concatenate", "stack"}
_TRANSPOSE = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "t"}
_SHUFFLE = {"channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle"}
_POOL = {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "max_pool1d", "avg_pool1d"}
_APOOL = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min"}
_FC = {"linear", "matmul", "rmatmul", "mm", "bmm", "addmm", "baddbmm"}
_SOFTMAX = {"softmax", "log_softmax"}
_RESIZE = {"interpolate", "upsample", "upsample_nearest2d", "upsample_bilinear2d"}
# Known zero-cost (views, shape queries, creation, dropout, padding, copies the runtime elides).
_IGNORED = {
    "get", "set", "size", "dim", "numel", "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
    "expand", "expand_as", "contiguous", "chunk", "split", "split_with_sizes", "unbind", "narrow", "getitem",
    "setitem", "select", "dropout", "dropout2d", "alpha_dropout", "pad", "clone", "detach", "to", "type",
    "float", "half", "is_contiguous", "stride", "storage_offset", "data_ptr", "element_size", "new_empty",
    "new_zeros", "new_ones", "empty", "zeros", "ones", "tensor", "full", "fill", "zero", "repr", "format",
    "len", "iter", "bool", "int", "item", "tolist", "requires_grad", "set_grad_enabled", "identity",
    "is_floating_point", "is_complex", "eq", "ne", "hash", "reduce_ex", "view_as", "reshape_as",
    "as_strided", "repeat_interleave", "masked_fill", "copy", "cpu", "cuda", "device", "dtype", "shape",
}


# --------------------------------------------------------------------------- tracer


class _Tracer:
    def __init__(self) -> None:
        self.kernels: list[Kernel] = []
        self.depth = 0
        self._ids: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []  # keep traced tensors alive so id() values stay unique
        self.constant_ids: set[int] = set()  # id() of parameters and buffers
        self.unknown: set[str] = set()

    def tid(self, t: torch.Tensor) -> int:
        key = id(t)
        if key not in self._ids:
            self._ids[key] = len(self._ids)
            self._keep.append(t)
        return self._ids[key]

    def add(self, **kw: Any) -> None:
        self.kernels.append(Kernel(**kw))

    # ---------------------------------------------------------------- shared kernel builders

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
             stride: Any, groups: int, op: str, name: str = "") -> None:
        k_h, k_w = int(weight.shape[-2]), int(weight.shape[-1])
        macs = _numel(y.shape) * int(weight.shape[1]) * k_h * k_w
        params = weight.numel() + (bias.numel() if bias is not None else 0)
        cin = int(x.shape[1])
        ktype = "dwconv" if groups > 1 and groups == cin else "conv"
        self.add(type=ktype, input_shape=tuple(x.shape), output_shape=tuple(y.shape), macs=macs,
                 params=params, bytes=BYTES_PER_ELEMENT * (x.numel() + params + y.numel()),
                 kernel_size=max(k_h, k_w), stride=_first_int(stride), groups=int(groups), op=op, name=name,
                 in_ids=(self.tid(x),), out_id=self.tid(y))

    def fc(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, op: str, name: str = "",
           weight_is_param: bool = True, bias: torch.Tensor | None = None) -> None:
        # linear: b is the weight (out, in); matmul: contraction over a's last dim
        k = int(a.shape[-1])
        macs = _numel(y.shape) * k
        params = (b.numel() if weight_is_param else 0) + (bias.numel() if bias is not None else 0)
        read = a.numel() + b.numel() + (bias.numel() if bias is not None else 0)
        ids = (self.tid(a),) if weight_is_param else (self.tid(a), self.tid(b))
        self.add(type="fc", input_shape=tuple(a.shape), output_shape=tuple(y.shape), macs=macs, params=params,
                 bytes=BYTES_PER_ELEMENT * (read + y.numel()), op=op, name=name, in_ids=ids, out_id=self.tid(y))

    def generic(self, ktype: str, inputs: list[torch.Tensor], y: torch.Tensor, op: str, name: str = "",
                params: int = 0, kernel_size: int = 0, stride: int = 1) -> None:
        acts = [t for t in inputs if id(t) not in self.constant_ids]
        consts = [t for t in inputs if id(t) in self.constant_ids]
        if not acts:  # parameter-only arithmetic: folded at deployment time
            return
        params += sum(t.numel() for t in consts)
        read = sum(t.numel() for t in acts) + params
        self.add(type=ktype, input_shape=tuple(acts[0].shape), output_shape=tuple(y.shape), params=params,
                 bytes=BYTES_PER_ELEMENT * (read + y.numel()), kernel_size=kernel_size, stride=stride, op=op,
                 name=name, in_ids=tuple(self.tid(t) for t in acts), out_id=self.tid(y))

    # ---------------------------------------------------------------- functional path

    def on_function(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = _norm_name(func)
        if not name or name in _IGNORED:
            return
        outs = _tensors(out)
        if not outs:
            return
        y = outs[0]
        tensors = _tensors(list(args)) + _tensors(list(kwargs.values()))
        if not tensors:
            return
        x = tensors[0]

        if name == "conv2d":
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            self.conv(x, weight, bias, y, stride, int(groups), op=name)
        elif name in _FC:
            if name == "linear":
                w = args[1] if len(args) > 1 else kwargs["weight"]
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                self.fc(x, w, y, op=name, bias=bias)
            elif name in ("addmm", "baddbmm"):
                a, b = tensors[1], tensors[2]
                self.fc(a, b, y, op=name, weight_is_param=id(b) in self.constant_ids)
            else:
                a, b = (tensors[1], tensors[0]) if name == "rmatmul" else (tensors[0], tensors[1])
                self.fc(a, b, y, op=name, weight_is_param=id(b) in self.constant_ids)
        elif name in _ADD:
            self.generic("add", tensors, y, op=name)
        elif name in _MUL:
            self.generic("mul", tensors, y, op=name)
        elif name in _ACT:
            self.generic("relu", tensors, y, op=name)
        elif name == "gelu":
            self.generic("gelu", tensors, y, op=name)
        elif name in _NORM:
            self.generic("layernorm", tensors, y, op=name)
        elif name == "batch_norm":
            self.generic("bn", tensors, y, op=name)
        elif name in _CONCAT:
            self.generic("concat", tensors, y, op=name)
        elif name in _TRANSPOSE:
            if _moves_data(x, name, args, kwargs):
                self.generic("transpose", [x], y, op=name)
        elif name in _SHUFFLE:
            self.generic("channel_shuffle", [x], y, op=name)
        elif name in _POOL:
            ks = args[1] if len(args) > 1 else kwargs.get("kernel_size", 1)
            st = args[2] if len(args) > 2 and args[2] is not None else kwargs.get("stride") or ks
            self.generic("pool", [x], y, op=name, kernel_size=_first_int(ks), stride=_first_int(st))
        elif name in _APOOL:
            glob = y.dim() >= 2 and y.shape[-1] == 1 and y.shape[-2] == 1
            self.generic("global_pool" if glob else "pool", [x], y, op=name)
        elif name in _REDUCE:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            self.generic("global_pool" if _is_spatial_reduce(x, dims) else "reduce", [x], y, op=name)
        elif name in _SOFTMAX:
            self.generic("softmax", [x], y, op=name)
        elif name in _RESIZE:
            self.generic("resize", [x], y, op=name)
        else:
            self.unknown.add(name)


def _moves_data(x: torch.Tensor, name: str, args: tuple, kwargs: dict) -> bool:
    """False when a permute/transpose keeps the order of all non-singleton dims (no data moves)."""
    nd = x.dim()
    if nd < 2 or x.numel() <= 1:
        return False
    if name == "t":
        perm = list(range(nd))[::-1]
    elif name == "permute":
        dims = list(args[1:]) if len(args) > 1 else list(kwargs.get("dims", ()))
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = list(dims[0])
        perm = [int(d) % nd for d in dims]
    elif name == "movedim":
        src = args[1] if len(args) > 1 else kwargs["source"]
        dst = args[2] if len(args) > 2 else kwargs["destination"]
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        return any(int(x.shape[s]) > 1 for s in src) and [s % nd for s in src] != [d % nd for d in dst]
    else:  # transpose / swapaxes / swapdims
        d0 = args[1] if len(args) > 1 else kwargs.get("dim0", 0)
        d1 = args[2] if len(args) > 2 else kwargs.get("dim1", 1)
        perm = list(range(nd))
        perm[int(d0) % nd], perm[int(d1) % nd] = perm[int(d1) % nd], perm[int(d0) % nd]
    kept = [d for d in perm if int(x.shape[d]) > 1]
    return kept != sorted(kept)


def _is_spatial_reduce(x: torch.Tensor, dims: Any) -> bool:
    if x.dim() != 4 or dims is None:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {d % 4 for d in dims}
    return dims == {2, 3}


# --------------------------------------------------------------------------- module hooks

_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh", nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Tanh: "tanh",
    nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Mish: "mish", nn.PReLU: "prelu",
}
_ZERO_COST_MODULES = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout2d, nn.Unflatten)
_HOOKED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.GELU,
           nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ChannelShuffle,
           nn.Softmax, *_ACT_MODULES, *_ZERO_COST_MODULES)


def _record_module(tr: _Tracer, m: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    t = type(m)
    if t in _ZERO_COST_MODULES:
        return
    if t is nn.Conv2d:
        tr.conv(x, m.weight, m.bias, y, m.stride, m.groups, op="conv2d", name=name)
    elif t is nn.Linear:
        tr.fc(x, m.weight, y, op="linear", name=name, bias=m.bias)
    elif t in (nn.BatchNorm1d, nn.BatchNorm2d):
        tr.generic("bn", [x], y, op="batch_norm", name=name, params=4 * m.num_features)
    elif t in (nn.LayerNorm, nn.GroupNorm):
        params = sum(p.numel() for p in m.parameters(recurse=False))
        op = "layer_norm" if t is nn.LayerNorm else "group_norm"
        tr.generic("layernorm", [x], y, op=op, name=name, params=params)
    elif t is nn.GELU:
        tr.generic("gelu", [x], y, op="gelu", name=name)
    elif t in _ACT_MODULES:
        params = sum(p.numel() for p in m.parameters(recurse=False))
        tr.generic("relu", [x], y, op=_ACT_MODULES[t], name=name, params=params)
    elif t in (nn.MaxPool2d, nn.AvgPool2d):
        stride = m.stride if m.stride is not None else m.kernel_size
        op = "max_pool2d" if t is nn.MaxPool2d else "avg_pool2d"
        tr.generic("pool", [x], y, op=op, name=name, kernel_size=_first_int(m.kernel_size),
                   stride=_first_int(stride))
    elif t in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        glob = y.shape[-1] == 1 and y.shape[-2] == 1
        op = "adaptive_avg_pool2d" if t is nn.AdaptiveAvgPool2d else "adaptive_max_pool2d"
        tr.generic("global_pool" if glob else "pool", [x], y, op=op, name=name)
    elif t is nn.ChannelShuffle:
        tr.generic("channel_shuffle", [x], y, op="channel_shuffle", name=name)
    elif t is nn.Softmax:
        tr.generic("softmax", [x], y, op="softmax", name=name)


class _Mode(TorchFunctionMode):
    def __init__(self, tracer: _Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.tracer.depth == 0:
            try:
                self.tracer.on_function(func, args, kwargs, out)
            except Exception as exc:  # never let bookkeeping break the forward pass
                log.debug("kernel tracer skipped %s: %s", _norm_name(func), exc)
                self.tracer.unknown.add(_norm_name(func))
        return out


def _install_hooks(module: nn.Module, tr: _Tracer) -> list[Any]:
    handles = []
    for name, m in module.named_modules():
        if type(m) not in _HOOKED:
            continue

        def pre(mod, inputs, _tr=tr):
            _tr.depth += 1

        def post(mod, inputs, output, _tr=tr, _name=name):
            try:
                if _tr.depth == 1:  # outermost hooked module only
                    xs, ys = _tensors(list(inputs)), _tensors(output)
                    if xs and ys:
                        _record_module(_tr, mod, _name, xs[0], ys[0])
            finally:
                _tr.depth -= 1

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    return handles


def trace_kernels(module: nn.Module, input_shape: tuple[int, ...] | Iterable[int]) -> list[Kernel]:
    """Run one forward of ``module`` on zeros of ``input_shape`` and return its kernels in order."""
    input_shape = tuple(int(s) for s in input_shape)
    tr = _Tracer()
    for p in module.parameters():
        tr.constant_ids.add(id(p))
    for b in module.buffers():
        tr.constant_ids.add(id(b))
    was_training = module.training
    handles = _install_hooks(module, tr)
    try:
        module.eval()
        param = next(module.parameters(), None)
        x = torch.zeros(input_shape, dtype=torch.float32,
                        device=param.device if param is not None else "cpu")
        tr.tid(x)
        with torch.no_grad(), _Mode(tr):
            module(x)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    trace_kernels.last_unknown = sorted(tr.unknown)  # type: ignore[attr-defined]
    if tr.unknown:
        log.debug("unrecognised torch functions (not priced): %s", sorted(tr.unknown))
    return tr.kernels


trace_kernels.last_unknown = []  # type: ignore[attr-defined]


def total_macs(kernels: Iterable[Kernel]) -> int:
    return sum(k.macs for k in kernels)


def summarize(kernels: Iterable[Kernel]) -> dict[str, dict[str, int]]:
    """Per kernel type: count, macs, bytes."""
    out: dict[str, dict[str, int]] = {}
    for k in kernels:
        d = out.setdefault(k.type, {"count": 0, "macs": 0, "bytes": 0})
        d["count"] += 1
        d["macs"] += k.macs
        d["bytes"] += k.bytes
    return out
