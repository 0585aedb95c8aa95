import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import nas.export as export
from nas.export import export_onnx
from search_spaces.arch import build_net
from search_spaces.convert import quadratize
from search_spaces.spaces import get_space
from tests.helpers import liven


def _run_onnx(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.numpy()})[0]


def _check(net: nn.Module, shape, path) -> dict:
    net.train()
    info = export_onnx(net, shape, path)
    assert net.training  # mode restored
    assert info["path"] == str(path) and info["opset"] == 17 and info["onnxruntime"] == ort.__version__
    assert 0.0 <= info["max_abs_diff"] <= export.MAX_ABS_DIFF
    x = torch.randn(5, *shape)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    got = _run_onnx(path, x)
    assert got.shape == (5, 10) and np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(got, expected, atol=export.MAX_ABS_DIFF)
    return info


def test_quadra_random_arch(tmp_path):
    arch = get_space("quadra").with_input((1, 28, 28), 10, stem_stride=2).random_arch(0)
    _check(liven(build_net(arch, memory_saving=True)), (1, 28, 28), tmp_path / "quadra.onnx")


def test_proxyless_arch(tmp_path):
    space = get_space("proxyless", widths=(16, 24, 32, 48, 64, 96), depths=(2, 2, 2, 2, 2, 1),
                      head_width=256).with_input((3, 32, 32), 10)
    _check(liven(build_net(space.random_arch(1))), (3, 32, 32), tmp_path / "proxyless.onnx")


def test_quadratized_first_order_model(tmp_path):
    space = get_space("quadra", widths=(16, 32), depths=(2, 2)).with_input((1, 28, 28), 10, stem_stride=2)
    net = build_net(space.arch(["convnext_k3_e2", "convnext_k5_e2", "convnext_k7_e4", "identity"]))
    assert quadratize(net) == 3
    _check(liven(net), (1, 28, 28), tmp_path / "quadratized.onnx")


def test_mismatch_raises_and_writes_nothing(tmp_path, monkeypatch):
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    monkeypatch.setattr(export, "MAX_ABS_DIFF", -1.0)
    with pytest.raises(RuntimeError, match="does not match PyTorch"):
        export_onnx(net, (3, 2, 2), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
