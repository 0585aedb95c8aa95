"""nn-Meter bridge: a real custom predictor package, built on the fly (synthetic regressors),
registered through nn-Meter's own registration in a temporary HOME, loaded by name offline."""

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from latency import nnmeter
from latency.base import NNMETER_CUSTOM
from tests.latency.synthetic_predictors import build_custom_predictor

NAME = "quadranas_test_cpu"
SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predictor_pkg")
    return build_custom_predictor(folder, NAME, n_samples=200)


@pytest.fixture(scope="module")
def home(package, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    assert nnmeter.register_custom_predictor(package, home) == NAME
    return home


@pytest.fixture(scope="module")
def predictor(home):
    return nnmeter.NNMeterPredictor(NAME, home=home)


def conv_net():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


class QuadraLike(nn.Module):
    """Quadratic depthwise conv (Mul), LayerNorm over channels-last (permute), GELU MLP."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.dwa, self.dwb = nn.Conv2d(c, c, 7, 1, 3, groups=c), nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.hswish = nn.Hardswish()

    def forward(self, x):
        x = self.stem(x)
        x = x + self.dwa(x) * self.dwb(x)
        y = self.fc2(self.act(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        return self.hswish(x + y.permute(0, 3, 1, 2))


def test_registered_by_nnmeter_and_loadable_by_name(home, package):
    entries = yaml.safe_load((home / ".nn_meter" / "config" / "predictors.yaml").read_text())
    assert [e["name"] for e in entries].count(NAME) == 1
    assert nnmeter.predictor_dir(NAME, home) == package.parent
    assert nnmeter.predictor_available(NAME, home)
    assert not nnmeter.builtin_available(NAME, home)  # custom, not built-in
    raw = nnmeter.load_latency_predictor(NAME, home=home)  # nn-Meter's own object
    assert "conv-bn-relu" in raw.kernel_predictors


def test_register_via_cli_subprocess_with_home(package, tmp_path):
    name = nnmeter.register_custom_predictor(package, tmp_path, via_cli=True)
    assert name == NAME
    assert nnmeter.predictor_entry(NAME, tmp_path)["package_location"] == str(package.parent)
    # registering again replaces the entry instead of duplicating it
    nnmeter.register_custom_predictor(package, tmp_path)
    assert [e["name"] for e in nnmeter.predictor_entries(tmp_path)].count(NAME) == 1
    nnmeter.unregister_custom_predictor(NAME, tmp_path)
    assert nnmeter.predictor_entry(NAME, tmp_path) is None


def test_predicts_conv_net_without_correction(predictor):
    lat = predictor.module_ms(conv_net(), SHAPE)
    assert math.isfinite(lat.ms) and lat.ms > 0
    assert lat.predictor == f"nnmeter/{NAME}" and lat.provenance == NNMETER_CUSTOM
    assert predictor.provenance == NNMETER_CUSTOM and NAME in predictor.version
    breakdown = predictor.analyze(conv_net(), SHAPE)
    assert breakdown.nnmeter_ms > 0
    assert breakdown.unpriced == ()  # conv/dwconv/relu/gap/fc all priced by nn-Meter kernels


def test_corrects_layernorm_gelu_mul_transpose(predictor):
    breakdown = predictor.analyze(QuadraLike(), SHAPE)
    by_type = breakdown.correction_by_type()
    assert {"LayerNormalization", "Gelu", "Mul", "Transpose"} <= set(by_type)
    assert all(v > 0 for v in by_type.values())
    assert breakdown.correction_ms > 0 and breakdown.total_ms > breakdown.nnmeter_ms > 0
    assert breakdown.notes == ()  # channels-last Linear priced as 1x1 conv, not a 1-row fc
    lat = predictor.module_ms(QuadraLike(), SHAPE)
    assert lat.ms == pytest.approx(breakdown.total_ms)
    assert f"+ {breakdown.correction_ms:.3f} ms for" in lat.error_note
    assert "memory model" in lat.error_note


def test_injected_extra_op_pricing(home):
    def one_ms(op_type, nbytes):
        assert nbytes > 0
        return 1.0

    one_ms.version = "one-ms-per-op"
    p = nnmeter.NNMeterPredictor(NAME, home=home, extra_op_ms=one_ms)
    assert "one-ms-per-op" in p.version
    breakdown = p.analyze(QuadraLike(), SHAPE)
    assert breakdown.correction_ms == pytest.approx(len(breakdown.unpriced)) and breakdown.unpriced


def test_pricing_graph_computes_the_same_function():
    import onnxruntime as ort

    net = QuadraLike().eval()
    model = nnmeter.to_onnx_model(net, SHAPE)
    pricing = nnmeter.nnmeter_pricing_graph(model)
    ops = [n.op_type for n in pricing.graph.node]
    assert "HardSwish" not in ops and "Gemm" not in ops and "MatMul" not in ops
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    outs = [ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0] for m in (model, pricing)]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(outs[0], ref, atol=1e-5)
    np.testing.assert_allclose(outs[1], ref, atol=1e-5)


def test_export_restores_training_mode():
    net = conv_net().train()
    nnmeter.to_onnx_model(net, SHAPE)
    assert net.training


def test_batch_other_than_one_is_refused(predictor):
    with pytest.raises(ValueError, match="batch 1"):
        predictor.module_ms(conv_net(), (2, 3, 32, 32))


@pytest.fixture
def download_spies(monkeypatch):
    import nn_meter.predictor.utils
    import nn_meter.utils.utils
    import requests

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("nn-Meter download attempted")

    monkeypatch.setattr(nn_meter.predictor.utils, "download_from_url", spy)
    monkeypatch.setattr(nn_meter.utils.utils, "download_from_url", spy)
    monkeypatch.setattr(requests, "get", spy)
    return calls


def test_missing_builtin_raises_instead_of_downloading(tmp_path, download_spies):
    name = "cortexA76cpu_tflite21"
    assert not nnmeter.builtin_available(name, tmp_path)
    assert nnmeter.predictor_dir(name, tmp_path) == tmp_path / ".nn_meter" / "data" / "predictor" / name
    assert "fusion_rules.json" in nnmeter.missing_predictor_files(name, tmp_path)
    with pytest.raises(nnmeter.PredictorUnavailableError) as info:
        nnmeter.NNMeterPredictor(name, home=tmp_path)
    assert name in str(info.value) and "never" in str(info.value)
    with pytest.raises(nnmeter.PredictorUnavailableError):
        nnmeter.load_latency_predictor(name, home=tmp_path)
    assert download_spies == []


def test_session_blocks_nnmeters_own_downloader(tmp_path, download_spies):
    import nn_meter.predictor.utils as pu

    before = pu.__user_config_folder__
    with nnmeter.nnmeter_session(tmp_path) as nn_meter:
        assert pu.__user_config_folder__ == str(tmp_path / ".nn_meter" / "config")
        with pytest.raises(nnmeter.PredictorUnavailableError, match="never downloads"):
            nn_meter.load_latency_predictor("myriadvpu_openvino2019r2")  # bypasses our file check
    assert pu.__user_config_folder__ == before
    assert download_spies == []


def test_builtin_available_false_for_missing_folder_and_unknown_name(tmp_path):
    for name in nnmeter.BUILTIN_PREDICTORS:
        assert not nnmeter.builtin_available(name, tmp_path)
    assert not nnmeter.builtin_available("no_such_predictor", tmp_path)
    with pytest.raises(nnmeter.PredictorUnavailableError, match="no nn-Meter predictor named"):
        nnmeter.NNMeterPredictor("no_such_predictor", home=tmp_path)


def test_import_is_cheap_and_does_not_import_nn_meter():
    root = Path(__file__).resolve().parents[2]
    code = "import sys, latency.nnmeter; assert 'nn_meter' not in sys.modules; assert 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)


PRODUCT_PACKAGES = ("latency", "nas", "supernet", "search_spaces", "experiments")


def _modules_importing(top_level: str) -> set[str]:
    """Product source files with an ``import`` of ``top_level`` (function-level imports included)."""
    root = Path(__file__).resolve().parents[2]
    found = set()
    for pkg in PRODUCT_PACKAGES:
        for py in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(), str(py))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                if any(n == top_level or n.startswith(top_level + ".") for n in names):
                    found.add(py.relative_to(root).as_posix())
    return found


def test_bridge_is_a_package_with_nn_meter_imported_in_one_module():
    from latency.nnmeter import onnx_pricing, paths, predictor, session

    assert nnmeter.NNMeterPredictor is predictor.NNMeterPredictor
    assert nnmeter.builtin_available is paths.builtin_available
    assert nnmeter.to_onnx_model is onnx_pricing.to_onnx_model
    assert nnmeter.register_custom_predictor is session.register_custom_predictor
    assert _modules_importing("nn_meter") == {"latency/nnmeter/session.py"}


def test_synthetic_predictors_are_not_in_the_product():
    assert not hasattr(nnmeter, "build_custom_predictor")
    root = Path(__file__).resolve().parents[2]
    assert not [py for py in (root / "latency").rglob("*.py") if "SYNTHETIC_GFLOPS" in py.read_text()]
