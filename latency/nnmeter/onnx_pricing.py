"""torch -> ONNX for nn-Meter (torch 2.13: legacy exporter, fixed opset, onnxsim) and the graph
rewrites that make nn-Meter price what it would otherwise misprice.

Pricing rewrites (:func:`nnmeter_pricing_graph`, applied before nn-Meter sees the graph;
the rewritten graph computes the same function):

1. ``HardSwish`` (one op from opset 14 on) is expanded to Add-Clip-Div-Mul, the pattern of
   nn-Meter's hswish fusion unit, so nn-Meter prices it with its own hswish regressor.
2. nn-Meter prices every Gemm/MatMul as an fc on ONE row: its fc features are
   ``[cin, cout, flops]`` with ``flops = (2*cin+1)*cout``, no row count; and its ONNX converter
   permutes every 4-D tensor as if it were NCHW (``ir_converter/onnx_converter/utils.py:
   get_tensor_shape``), so a MatMul on channels-last ``(1,H,W,C)`` even gets cin = H. A ``Linear``
   over the pixels of a feature map (QuadraBlock's MLP, exported as Reshape-Gemm-Reshape or as a
   4-D MatMul + bias Add) is thus priced as a tiny single-vector fc. When the row count is a
   square h*h, such a node (plus its bias) is rewritten to a 1x1 Conv on an h x h map between
   layout Transposes/Reshapes; nn-Meter then prices it with its conv kernel. The layout nodes
   exist only for pricing and are not charged. Non-square row counts are left alone and reported
   in the breakdown's ``notes`` and the Latency's ``error_note``.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from latency.nnmeter.errors import NNMeterUnsupportedGraphError, require_module

if TYPE_CHECKING:  # pragma: no cover
    import onnx

ONNX_OPSET = 20  # keeps LayerNormalization and Gelu as single nodes

# Ops that move no data in any runtime we care about (views / metadata); never charged.
FREE_OP_TYPES = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Constant"}
)
# Node names of layout transposes that exist only in the pricing graph (rewrite 2).
PRICING_ONLY_PREFIX = "__nnmeter_pricing_layout__/"


def _module_device(module: nn.Module) -> torch.device:
    """Where the module's first parameter (or buffer) lives; CPU for a module without any."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def to_onnx_model(module: nn.Module, input_shape: Sequence[int], opset: int = ONNX_OPSET) -> onnx.ModelProto:
    """Export ``module`` (eval mode, no grad) at ``input_shape`` (batch included) to ONNX in
    memory with the TorchScript exporter (``dynamo=False``, opset 20), simplify with onnxsim,
    turn leftover Constant nodes into initializers, give every node a unique name and run shape
    inference. The module's training flag is restored afterwards."""
    require_module("onnxsim", "The ONNX export for nn-Meter")
    import onnx
    import onnxsim

    shape = tuple(int(d) for d in input_shape)
    example = torch.randn(shape, device=_module_device(module))
    was_training = module.training
    buffer = io.BytesIO()
    try:
        module.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "legacy TorchScript-based ONNX export" deprecation
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=True,
            )
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified ONNX model")
    _constants_to_initializers(simplified)
    _unique_node_names(simplified)
    return onnx.shape_inference.infer_shapes(simplified)


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    # nn-Meter's converter crashes on nodes without activation inputs (KeyError 'type').
    import onnx

    graph = model.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _unique_node_names(model: onnx.ModelProto) -> None:
    # nn-Meter keys nodes by name and joins fused names with ";".
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name.replace(";", "_")
        if not name or name in seen:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
        node.name = name
        seen.add(name)


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int], int]]:
    """name -> (dims, element type) for value infos and initializers (dims <= 0 = unknown)."""
    graph = model.graph
    table: dict[str, tuple[list[int], int]] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        table[info.name] = (dims, tensor_type.elem_type)
    for init in graph.initializer:
        table[init.name] = (list(init.dims), init.data_type)
    return table


def nbytes_of(dims: list[int], elem_type: int) -> int:
    """Bytes of a tensor of ``dims`` and ONNX element type (0 when a dimension is unknown)."""
    from onnx import helper

    if any(d < 0 for d in dims):
        return 0
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        itemsize = 4
    return int(math.prod(dims)) * itemsize


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _linear_as_conv(
    node: Any,
    shapes: dict[str, tuple[list[int], int]],
    inits: dict[str, Any],
    consumers: dict[str, list[Any]],
    graph_outputs: set[str],
) -> tuple[list[Any], list[Any], Any] | None:
    """Rewrite 2: a MatMul/Gemm with a weight initializer applied to M = h*h > 1 rows (a Linear
    over the pixels of an h x h map: input (1,h,h,K), (1,M,K) or (M,K)) becomes
    [Reshape ->] Transpose -> Conv 1x1 -> Transpose [-> Reshape]; only the conv is charged.
    Returns (nodes, initializers, bias Add node folded into the conv or None), or None."""
    from onnx import helper, numpy_helper

    p = node.name
    x = node.input[0]
    if len(node.input) < 2 or node.input[1] not in inits or x not in shapes:
        return None
    dims = shapes[x][0]
    weight = numpy_helper.to_array(inits[node.input[1]])
    if len(dims) < 2 or any(d <= 0 for d in dims) or weight.ndim != 2:
        return None
    if len(dims) == 4 and dims[0] != 1:
        return None
    rows, k = int(math.prod(dims[:-1])), dims[-1]
    h = math.isqrt(rows)
    if rows <= 1 or h * h != rows:
        return None  # single vector (nn-Meter's fc is right) or non-square: left alone, noted
    bias = None
    out = node.output[0]
    dropped_add = None
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            return None
        w_nk = weight if _attr(node, "transB", 0) else weight.T
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                return None
            c = numpy_helper.to_array(inits[node.input[2]])
            if c.size != w_nk.shape[0]:
                return None
            bias = c.reshape(-1)
    else:
        w_nk = weight.T
        users = consumers.get(out, [])
        if out not in graph_outputs and len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = add.input[1] if add.input[0] == out else add.input[0]
            if other in inits and numpy_helper.to_array(inits[other]).shape == (w_nk.shape[0],):
                bias = numpy_helper.to_array(inits[other])
                out = add.output[0]
                dropped_add = add
    n_out = int(w_nk.shape[0])
    if w_nk.shape[1] != k:
        return None
    tag = PRICING_ONLY_PREFIX + p
    nodes: list[Any] = []
    new_inits = [numpy_helper.from_array(
        np.ascontiguousarray(w_nk.reshape(n_out, k, 1, 1)).astype(weight.dtype), f"{p}/conv_weight")]
    conv_inputs = [f"{p}/conv_weight"]
    if bias is not None:
        new_inits.append(numpy_helper.from_array(bias.astype(weight.dtype), f"{p}/conv_bias"))
        conv_inputs.append(f"{p}/conv_bias")
    nhwc_in = x
    if dims != [1, h, h, k]:
        new_inits.append(numpy_helper.from_array(np.array([1, h, h, k], dtype=np.int64), f"{p}/nhwc_shape"))
        nodes.append(helper.make_node("Reshape", [x, f"{p}/nhwc_shape"], [f"{p}/nhwc_in"], name=f"{tag}/reshape_in"))
        nhwc_in = f"{p}/nhwc_in"
    out_dims = [*dims[:-1], n_out]
    final = out if out_dims == [1, h, h, n_out] else f"{p}/nhwc_out"
    nodes += [
        helper.make_node("Transpose", [nhwc_in], [f"{p}/nchw"], perm=[0, 3, 1, 2], name=f"{tag}/to_nchw"),
        helper.make_node("Conv", [f"{p}/nchw", *conv_inputs], [f"{p}/conv_out"], kernel_shape=[1, 1], name=p),
        helper.make_node("Transpose", [f"{p}/conv_out"], [final], perm=[0, 2, 3, 1], name=f"{tag}/to_nhwc"),
    ]
    if final != out:
        new_inits.append(numpy_helper.from_array(np.array(out_dims, dtype=np.int64), f"{p}/out_shape"))
        nodes.append(helper.make_node("Reshape", [final, f"{p}/out_shape"], [out], name=f"{tag}/reshape_out"))
    return nodes, new_inits, dropped_add


def nnmeter_pricing_graph(model: onnx.ModelProto, linear_as_conv: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` with the pricing rewrites of the module docstring: HardSwish ->
    Add-Clip-Div-Mul, and a Linear over h*h pixels (MatMul/Gemm, + bias Add) -> 1x1 Conv between
    pricing-only Transposes/Reshapes. The result computes the same function."""
    import onnx
    from onnx import helper, numpy_helper

    work = onnx.ModelProto()
    work.CopyFrom(model)
    _unique_node_names(work)
    work = onnx.shape_inference.infer_shapes(work)
    graph = work.graph
    shapes = tensor_shapes(work)
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    dropped: set[str] = set()  # names of bias Adds folded into a conv
    for node in graph.node:
        if node.name in dropped:
            continue
        p = node.name
        if node.op_type == "HardSwish":
            x, y = node.input[0], node.output[0]
            for key, value in {"three": 3.0, "zero": 0.0, "six": 6.0}.items():
                new_inits.append(numpy_helper.from_array(np.array(value, dtype=np.float32), f"{p}/{key}"))
            new_nodes += [
                helper.make_node("Add", [x, f"{p}/three"], [f"{p}/add_out"], name=f"{p}/Add"),
                helper.make_node("Clip", [f"{p}/add_out", f"{p}/zero", f"{p}/six"], [f"{p}/clip_out"],
                                 name=f"{p}/Clip"),
                helper.make_node("Div", [f"{p}/clip_out", f"{p}/six"], [f"{p}/div_out"], name=f"{p}/Div"),
                helper.make_node("Mul", [x, f"{p}/div_out"], [y], name=f"{p}/Mul"),
            ]
            continue
        if linear_as_conv and node.op_type in ("MatMul", "Gemm"):
            rewritten = _linear_as_conv(node, shapes, inits, consumers, graph_outputs)
            if rewritten is not None:
                nodes, extra_inits, dropped_add = rewritten
                new_nodes += nodes
                new_inits += extra_inits
                if dropped_add is not None:
                    dropped.add(dropped_add.name)
                continue
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in new_nodes for name in node.input}
    kept_inits = [t for t in (*graph.initializer, *new_inits) if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(work)


def check_nnmeter_can_read(model: onnx.ModelProto) -> None:
    """nn-Meter's ONNX converter needs a first activation input and output of rank >= 2 on every
    node (else KeyError 'type' deep inside); fail early with a readable message."""
    shapes = tensor_shapes(model)
    weights = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        ins = [shapes[n][0] for n in node.input if n in shapes and n not in weights]
        outs = [shapes[n][0] for n in node.output if n in shapes]
        if not ins or len(ins[0]) <= 1 or not outs or len(outs[0]) <= 1:
            raise NNMeterUnsupportedGraphError(
                f"nn-Meter 2.0 cannot convert ONNX node {node.name!r} ({node.op_type}): it needs an "
                "activation input and output of rank >= 2"
            )


def mispricing_notes(model: onnx.ModelProto) -> list[str]:
    """Known mispricings left after the rewrites: multi-row MatMul/Gemm priced as a one-row fc."""
    shapes = tensor_shapes(model)
    notes = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):  # left after the pricing rewrites
            dims = shapes.get(node.input[0], ([], 0))[0]
            rows = math.prod(dims[:-1]) if len(dims) >= 2 else 1
            if rows != 1:
                notes.append(f"{node.op_type} {node.name!r} over {rows} rows is priced by nn-Meter as "
                             "a single-row fc (rows ignored)")
    return notes
