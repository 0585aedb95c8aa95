"""ONNX export of a trained network, checked against PyTorch with onnxruntime before it is written.

Uses the TorchScript exporter (``dynamo=False``): it handles every op of
:func:`search_spaces.arch.build_net` networks (LayerNorm on permuted tensors, exact GELU,
quadratic depthwise products, MBConv with BatchNorm/ReLU6) with a dynamic batch axis. The
model is traced at batch 1 and verified at batch 2, so a batch size baked into the graph fails
the check. A model that fails the check is never written to ``path``.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from torch import nn

from search_spaces.io import atomic_write_bytes

MAX_ABS_DIFF = 1e-3  # largest |onnxruntime - pytorch| logit difference accepted
VERIFY_BATCH = 2
VERIFY_SEED = 0


def _onnx_bytes(net: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo; it is the one that works here
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def export_onnx(net: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike, opset: int = 17) -> dict:
    """Export ``net`` (eval mode) for inputs of shape ``(batch, *input_shape)``; verify; write atomically.

    ``input_shape`` excludes the batch dimension, e.g. ``(3, 224, 224)``. Returns
    ``{"path", "opset", "max_abs_diff", "onnxruntime"}``; RuntimeError if onnxruntime's output differs
    from PyTorch's by more than :data:`MAX_ABS_DIFF` (nothing is written then).
    """
    import onnx
    import onnxruntime as ort

    input_shape = tuple(int(v) for v in input_shape)
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(VERIFY_SEED)
    x = torch.randn(VERIFY_BATCH, *input_shape, generator=gen)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            data = _onnx_bytes(net, x[:1].to(device), opset)
            expected = net(x.to(device)).float().cpu().numpy()
    finally:
        net.train(was_training)

    onnx.checker.check_model(onnx.load_from_string(data))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"input": x.numpy()})
    if got.shape != expected.shape:
        raise RuntimeError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not diff <= MAX_ABS_DIFF:  # also catches NaN
        raise RuntimeError(f"ONNX export does not match PyTorch: max |diff| {diff:.3g} > {MAX_ABS_DIFF} "
                           f"(opset {opset}, onnxruntime {ort.__version__}); not written to {path}")
    out = atomic_write_bytes(path, data)
    return {"path": str(out), "opset": opset, "max_abs_diff": diff, "onnxruntime": ort.__version__}
