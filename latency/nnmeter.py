"""The bridge to nn-Meter 2.0: the only module in QuadraNAS that imports ``nn_meter``.

``nn_meter`` is imported lazily inside functions, so ``import latency.nnmeter`` is cheap
and works even where nn-Meter is broken or absent.

Where nn-Meter keeps things (read from nn-Meter 2.0's source)
------------------------------------------------------------
* Config: ``~/.nn_meter/config/predictors.yaml`` (a copy of the packaged
  ``nn_meter/configs/predictors.yaml`` made on first use, plus registered custom predictors)
  and ``~/.nn_meter/config/settings.yaml`` (``data_folder``, default ``~/.nn_meter/data``).
  nn-Meter computes these paths with ``os.path.expanduser`` AT IMPORT TIME
  (``nn_meter/predictor/utils.py``, ``nn_meter/utils/config_manager.py``,
  ``nn_meter/utils/nn_meter_cli/registry.py``: module globals ``__user_config_folder__`` and
  ``__default_user_data_folder__``), so changing ``$HOME`` after ``import nn_meter`` has no
  effect. Every call here that takes ``home`` therefore patches those module globals for the
  duration of the call (:func:`_nnmeter_session`, serialised by a lock); the CLI registration
  path instead runs ``nn-meter register`` in a subprocess with ``HOME`` set.
* Built-in predictor files: ``<data_folder>/predictor/<name>/<kernel>.pkl`` for every kernel
  listed in predictors.yaml, plus ``fusion_rules.json``
  (``nn_meter/predictor/nn_meter_predictor.py: load_latency_predictor`` ->
  ``nn_meter/predictor/utils.py: loading_to_local``). When a ``.pkl`` is missing nn-Meter
  downloads a zip from GitHub with no timeout. This module NEVER lets that happen: it checks the
  files first (:func:`missing_predictor_files`) and raises :class:`PredictorUnavailableError`,
  and while nn-Meter code runs its ``download_from_url`` is replaced by a function that raises.
* Custom predictors: a predictors.yaml entry without ``download`` but with
  ``package_location``; loaded by ``loading_customized_predictor`` (plain ``pickle.load`` of every
  ``*.pkl``; nn-Meter then calls ``.predict(list_of_feature_vectors)`` on each).

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
described below) is priced by ``extra_op_ms(op_type, bytes_moved)``, bytes = sizes of all its
input tensors (activations and weights) and outputs from ONNX shape inference. The default is
:class:`MemoryBoundOpModel` (bytes / bandwidth * op factor + per-op overhead) with per-category
constants that are ASSUMPTIONS (:data:`DEFAULT_MEMORY_MODELS`), to be replaced by fitted ones.

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

Custom predictors (:func:`build_custom_predictor`, :func:`register_custom_predictor`) build a
real nn-Meter predictor package whose regressors are fitted on SYNTHETIC latencies (FLOPs and
bytes of a made-up device): test plumbing, not a model of any hardware.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import os
import pickle
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from latency.base import NNMETER_BUILTIN, NNMETER_CUSTOM, Latency

if TYPE_CHECKING:  # pragma: no cover
    import onnx

BUILTIN_PREDICTORS: tuple[str, ...] = (
    "cortexA76cpu_tflite21",
    "adreno640gpu_tflite21",
    "adreno630gpu_tflite21",
    "myriadvpu_openvino2019r2",
)
ONNX_OPSET = 20  # keeps LayerNormalization and Gelu as single nodes
FUSION_RULES_FILE = "fusion_rules.json"

# Ops that move no data in any runtime we care about (views / metadata); never charged.
FREE_OP_TYPES = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Constant"}
)
# Node names of layout transposes that exist only in the pricing graph (rewrite 2).
PRICING_ONLY_PREFIX = "__nnmeter_pricing_layout__/"

ExtraOpMs = Callable[[str, int], float]


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


def _require(module: str, purpose: str) -> None:
    """Raise :class:`NNMeterNotInstalledError` naming the extra if ``module`` cannot be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise NNMeterNotInstalledError(f"{purpose} needs the {module!r} package, which is not installed; {EXTRA_HINT}. "
                                       "Without it the device profiles use the calibrated stand-ins.")


# ----------------------------------------------------------------------------------------------
# Locations (no nn_meter import needed)
# ----------------------------------------------------------------------------------------------


def _home(home: str | os.PathLike | None) -> Path:
    return Path(home).expanduser().absolute() if home is not None else Path.home()


def config_folder(home: str | os.PathLike | None = None) -> Path:
    """nn-Meter's user config folder, ``<home>/.nn_meter/config``."""
    return _home(home) / ".nn_meter" / "config"


def _packaged_predictors_yaml() -> Path | None:
    spec = importlib.util.find_spec("nn_meter")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "configs" / "predictors.yaml"
    return path if path.is_file() else None


def _read_yaml(path: Path) -> Any:
    import yaml

    with open(path) as fp:
        return yaml.safe_load(fp)


def predictor_entries(home: str | os.PathLike | None = None) -> list[dict]:
    """The predictors nn-Meter knows under ``home``: the user's predictors.yaml (built-ins plus
    registered custom predictors) or, before nn-Meter's first use there, the packaged list."""
    user = config_folder(home) / "predictors.yaml"
    path = user if user.is_file() else _packaged_predictors_yaml()
    if path is None:
        return []
    return list(_read_yaml(path) or [])


def predictor_entry(name: str, home: str | os.PathLike | None = None) -> dict | None:
    """The predictors.yaml entry for ``name`` (latest version, like nn-Meter), or None."""
    entries = [e for e in predictor_entries(home) if e.get("name") == name]
    if not entries:
        return None
    from packaging import version

    return max(entries, key=lambda e: version.parse(str(e.get("version", "0"))))


def data_folder(home: str | os.PathLike | None = None) -> Path:
    """nn-Meter's data folder: ``data_folder`` of settings.yaml, default ``<home>/.nn_meter/data``."""
    settings = config_folder(home) / "settings.yaml"
    if settings.is_file():
        folder = (_read_yaml(settings) or {}).get("data_folder")
        if folder:
            return Path(folder)
    return _home(home) / ".nn_meter" / "data"


def predictor_dir(name: str, home: str | os.PathLike | None = None) -> Path:
    """Folder holding predictor ``name``'s ``<kernel>.pkl`` files and ``fusion_rules.json``:
    ``package_location`` for a registered custom predictor, else
    ``<data_folder>/predictor/<name>`` (where nn-Meter puts the built-ins)."""
    entry = predictor_entry(name, home)
    if entry is not None and "download" not in entry and entry.get("package_location"):
        return Path(entry["package_location"])
    return data_folder(home) / "predictor" / name


def missing_predictor_files(name: str, home: str | os.PathLike | None = None) -> list[str]:
    """Files of predictor ``name`` that are not on disk ([] = complete). Unknown name -> [name]."""
    entry = predictor_entry(name, home)
    if entry is None:
        return [name]
    folder = predictor_dir(name, home)
    wanted = [f"{k}.pkl" for k in entry.get("kernel_predictors", [])] + [FUSION_RULES_FILE]
    return [f for f in wanted if not (folder / f).is_file()]


_warned_not_installed: set[str] = set()


def builtin_available(name: str, home: str | os.PathLike | None = None) -> bool:
    """True if ``name`` is a built-in predictor whose files are all present (nothing downloaded)
    and nn-Meter itself is installed (the ``nnmeter`` extra)."""
    if name not in BUILTIN_PREDICTORS or missing_predictor_files(name, home):
        return False
    if not nnmeter_installed():
        if name not in _warned_not_installed:
            _warned_not_installed.add(name)
            logging.getLogger(__name__).warning(
                "nn-Meter predictor %s has its files in %s, but nn-meter is not installed; %s. "
                "Using the next backend of the profile.", name, predictor_dir(name, home), EXTRA_HINT)
        return False
    return True


def predictor_available(name: str, home: str | os.PathLike | None = None) -> bool:
    """True if ``name`` (built-in or registered custom) can be loaded without any download."""
    return not missing_predictor_files(name, home)


# ----------------------------------------------------------------------------------------------
# Running nn-Meter code against a given HOME, without downloads
# ----------------------------------------------------------------------------------------------

_SESSION_LOCK = threading.RLock()


def _refuse_download(urladdr: str, ppath: str, *args: Any, **kwargs: Any) -> None:
    raise PredictorUnavailableError(
        f"nn-Meter tried to download {urladdr} into {ppath}; QuadraNAS never downloads predictor "
        "files. Put the predictor's <kernel>.pkl files and fusion_rules.json there yourself, or "
        "use the calibrated stand-in."
    )


@contextlib.contextmanager
def _nnmeter_session(home: str | os.PathLike | None) -> Iterator[Any]:
    """Import nn_meter; point its config/data globals at ``home``; block its downloader;
    quieten its logger. Restores everything on exit. Yields the ``nn_meter`` module."""
    _require("nn_meter", "nn-Meter latency prediction")
    with _SESSION_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation on import
            import nn_meter
            import nn_meter.predictor.utils
            import nn_meter.utils.config_manager
            import nn_meter.utils.nn_meter_cli.registry  # noqa: F401

        base = _home(home) / ".nn_meter"
        values = {
            "__user_config_folder__": str(base / "config"),
            "__default_user_data_folder__": str(base / "data"),
        }
        saved: list[tuple[Any, str, Any]] = []
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or not (mod_name == "nn_meter" or mod_name.startswith("nn_meter.")):
                continue
            for attr, value in values.items():
                if attr in vars(mod):
                    saved.append((mod, attr, vars(mod)[attr]))
                    setattr(mod, attr, value)
        for mod_name in ("nn_meter.predictor.utils", "nn_meter.utils", "nn_meter.utils.utils"):
            mod = sys.modules.get(mod_name)
            if mod is not None and hasattr(mod, "download_from_url"):
                saved.append((mod, "download_from_url", mod.download_from_url))
                mod.download_from_url = _refuse_download
        logger = logging.getLogger("nn-Meter")
        old_level = logger.level
        logger.setLevel(logging.ERROR)  # it logs every prediction and warns about onnx versions
        try:
            yield nn_meter
        finally:
            logger.setLevel(old_level)
            for mod, attr, value in reversed(saved):
                setattr(mod, attr, value)


def _ensure_user_config(home: str | os.PathLike | None) -> None:
    """Create ``<home>/.nn_meter/config`` like nn-Meter does, without ever overwriting an
    existing predictors.yaml (nn-Meter's create_user_configs would, losing registrations).
    Call inside :func:`_nnmeter_session`."""
    import yaml
    from nn_meter.utils import config_manager

    folder = config_folder(home)
    if not (folder / "predictors.yaml").is_file():
        config_manager.create_user_configs()  # copies packaged yaml + writes settings.yaml
    if not (folder / "settings.yaml").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "settings.yaml", "w") as fp:
            yaml.safe_dump({"data_folder": str(_home(home) / ".nn_meter" / "data")}, fp)


def _unavailable_message(name: str, home: str | os.PathLike | None) -> str:
    entry = predictor_entry(name, home)
    if entry is None:
        known = ", ".join(e.get("name", "?") for e in predictor_entries(home))
        return f"no nn-Meter predictor named {name!r} under {config_folder(home)} (known: {known})"
    missing = missing_predictor_files(name, home)
    folder = predictor_dir(name, home)
    text = (
        f"nn-Meter predictor {name!r} is not available: missing {', '.join(missing)} in {folder}. "
        "QuadraNAS never triggers nn-Meter's download."
    )
    if "download" in entry:
        text += (
            f" Get the files from {entry['download']} yourself and unzip them into "
            f"{folder.parent} (note: the built-in pickles were made with scikit-learn 0.23.1 and do "
            "not load with scikit-learn >= 1.3, nn-Meter issue #131), or use the calibrated stand-in."
        )
    return text


def load_latency_predictor(name: str, home: str | os.PathLike | None = None, version: float | None = None):
    """``nn_meter.load_latency_predictor(name)`` under ``home``, but only when every file is on
    disk: raises :class:`PredictorUnavailableError` instead of downloading."""
    if missing_predictor_files(name, home):
        raise PredictorUnavailableError(_unavailable_message(name, home))
    _require("nn_meter", f"nn-Meter predictor {name!r}")
    with _nnmeter_session(home) as nn_meter:
        _ensure_user_config(home)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sklearn version warnings on unpickling
                return nn_meter.load_latency_predictor(name, version)
        except PredictorUnavailableError:
            raise
        except Exception as exc:
            try:
                sklearn_version = importlib.metadata.version("scikit-learn")
            except importlib.metadata.PackageNotFoundError:
                sklearn_version = "not installed"
            raise RuntimeError(
                f"nn-Meter could not load predictor {name!r} from {predictor_dir(name, home)}: {exc!r}. "
                "Built-in predictor pickles were made with scikit-learn 0.23.1 and fail with "
                f"scikit-learn >= 1.3 (nn-Meter issue #131); installed scikit-learn {sklearn_version}."
            ) from exc


# ----------------------------------------------------------------------------------------------
# torch -> ONNX bridge (torch 2.13: legacy exporter, fixed opset, onnxsim)
# ----------------------------------------------------------------------------------------------


def _module_device(module: nn.Module) -> torch.device:
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
    _require("onnxsim", "The ONNX export for nn-Meter")
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


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int], int]]:
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


def _nbytes(dims: list[int], elem_type: int) -> int:
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


def nnmeter_pricing_graph(model: onnx.ModelProto) -> onnx.ModelProto:
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
    shapes = _tensor_shapes(work)
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
        if node.op_type in ("MatMul", "Gemm"):
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


def _check_nnmeter_can_read(model: onnx.ModelProto) -> None:
    """nn-Meter's ONNX converter needs a first activation input and output of rank >= 2 on every
    node (else KeyError 'type' deep inside); fail early with a readable message."""
    shapes = _tensor_shapes(model)
    weights = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        ins = [shapes[n][0] for n in node.input if n in shapes and n not in weights]
        outs = [shapes[n][0] for n in node.output if n in shapes]
        if not ins or len(ins[0]) <= 1 or not outs or len(outs[0]) <= 1:
            raise NNMeterUnsupportedGraphError(
                f"nn-Meter 2.0 cannot convert ONNX node {node.name!r} ({node.op_type}): it needs an "
                "activation input and output of rank >= 2"
            )


# ----------------------------------------------------------------------------------------------
# Pricing the ops nn-Meter ignores
# ----------------------------------------------------------------------------------------------


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


def _priced_node_names(nm_predictor: Any) -> set[str]:
    """ONNX node names inside kernels that nn-Meter actually priced in its last ``predict`` call
    (mirrors ``predict_by_kernel.nn_predict`` on ``predictor.kd``'s basic blocks)."""
    from nn_meter.kernel_detector.utils.constants import DUMMY_TYPES
    from nn_meter.predictor.prediction.extract_feature import get_predict_features
    from nn_meter.predictor.prediction.predict_by_kernel import merge_conv_kernels
    from nn_meter.predictor.prediction.utils import get_kernel_name

    kd = nm_predictor.kd
    kernels = iter(kd.get_kernels())
    priced: set[str] = set()
    for bb in kd.bbs:
        types = [kd.model_graph.get_node_type(n) for n in bb]
        if not [t for t in types if t and t not in DUMMY_TYPES]:
            continue  # KernelDetector._bb_to_kernel returns None for these
        kernel = next(kernels)
        features = get_predict_features([kernel])
        if not features:
            continue
        op = next(iter(features[0]))
        if get_kernel_name(merge_conv_kernels(op)) in nm_predictor.kernel_predictors:
            for name in bb:
                priced.update(name.split(";"))  # multi-op fusion names are ";"-joined
    return priced


def _mispricing_notes(model: onnx.ModelProto) -> list[str]:
    shapes = _tensor_shapes(model)
    notes = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):  # left after the pricing rewrites
            dims = shapes.get(node.input[0], ([], 0))[0]
            rows = math.prod(dims[:-1]) if len(dims) >= 2 else 1
            if rows != 1:
                notes.append(f"{node.op_type} {node.name!r} over {rows} rows is priced by nn-Meter as "
                             "a single-row fc (rows ignored)")
    return notes


def _files_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".pkl" or path.name == FUSION_RULES_FILE:
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def _nnmeter_version() -> str:
    try:
        return importlib.metadata.version("nn-meter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
    ) -> None:
        entry = predictor_entry(predictor, home)
        if entry is None or missing_predictor_files(predictor, home):
            raise PredictorUnavailableError(_unavailable_message(predictor, home))
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
        )

    def analyze_onnx(self, model: onnx.ModelProto) -> NNMeterBreakdown:
        """nn-Meter's prediction for an ONNX model plus the priced list of ops it skipped."""
        pricing = nnmeter_pricing_graph(model)
        _check_nnmeter_can_read(pricing)
        with _nnmeter_session(self.home):
            try:
                nn_ms = float(self._nm.predict(pricing, model_type="onnx"))
                priced = _priced_node_names(self._nm)
            except (IndexError, KeyError) as exc:
                raise NNMeterUnsupportedGraphError(
                    f"nn-Meter 2.0 could not price this graph ({exc!r}); its ONNX path assumes 4-D NCHW "
                    "feature maps (e.g. elementwise add on rank-3 token tensors breaks its feature "
                    "extraction)"
                ) from exc
        shapes = _tensor_shapes(pricing)
        unpriced = []
        for node in pricing.graph.node:
            if node.name in priced or node.op_type in FREE_OP_TYPES or node.name.startswith(PRICING_ONLY_PREFIX):
                continue
            nbytes = sum(_nbytes(*shapes[n]) for n in (*node.input, *node.output) if n in shapes)
            ms = float(self.extra_op_ms(node.op_type, nbytes))
            unpriced.append(UnpricedOp(node.name, node.op_type, nbytes, ms))
        return NNMeterBreakdown(nn_ms, tuple(unpriced), tuple(_mispricing_notes(pricing)))

    def analyze(self, module: nn.Module, input_shape: Sequence[int]) -> NNMeterBreakdown:
        shape = tuple(int(d) for d in input_shape)
        if not shape or shape[0] != 1:
            raise ValueError(f"nn-Meter predicts batch 1 only (its features ignore the batch); got {shape}")
        return self.analyze_onnx(to_onnx_model(module, shape))

    def module_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        b = self.analyze(module, input_shape)
        if b.unpriced:
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


# ----------------------------------------------------------------------------------------------
# Custom predictor packages (test plumbing: synthetic regressors)
# ----------------------------------------------------------------------------------------------

DEFAULT_CUSTOM_KERNELS: tuple[str, ...] = (
    "conv-bn-relu", "dwconv-bn-relu", "fc", "global-avgpool", "hswish", "relu", "se", "split",
    "add", "addrelu", "maxpool", "avgpool", "bn", "bnrelu", "channelshuffle", "concat",
)  # the cortexA76cpu_tflite21 kernel list

DEFAULT_FUSION_RULES: dict[str, dict[str, bool]] = {
    "BF_conv_bn": {"obey": True},
    "BF_conv_relu": {"obey": True},
    "BF_dwconv_bn": {"obey": True},
    "BF_dwconv_relu": {"obey": True},
    "BF_bn_relu": {"obey": True},
    "BF_add_relu": {"obey": True},
    "BF_fc_relu": {"obey": True},
    "MON": {"obey": False},
}

# The made-up device behind the synthetic regressors.
SYNTHETIC_GFLOPS = 20.0
SYNTHETIC_GB_S = 5.0
SYNTHETIC_OVERHEAD_MS = 0.005


def _synthetic_ms(flops: float, elements: float) -> float:
    return flops / (SYNTHETIC_GFLOPS * 1e9) * 1e3 + 4 * elements / (SYNTHETIC_GB_S * 1e9) * 1e3 + SYNTHETIC_OVERHEAD_MS


def _synthetic_samples(kernel: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors laid out exactly as nn-Meter's ``get_predict_features`` builds them for
    ``kernel``, with latencies of the synthetic device."""
    hws = np.array([1, 2, 4, 7, 8, 14, 16, 28, 32, 56, 64, 112, 224])
    chans = np.array([3, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024])
    xs, ys = [], []
    for _ in range(n):
        hw, cin, cout = int(rng.choice(hws)), int(rng.choice(chans)), int(rng.choice(chans))
        ks, s = int(rng.choice([1, 3, 5, 7])), int(rng.choice([1, 2]))
        elems = hw * hw * cin
        if kernel in ("conv-bn-relu", "dwconv-bn-relu"):
            if kernel == "dwconv-bn-relu":
                cout = cin
                params = cout * (ks * ks + 1)
            else:
                params = cout * (ks * ks * cin + 1)
            flops = 2 * hw / s * hw / s * params
            x = [hw, cin, cout, ks, s, flops / 2e6, params / 1e6]
            y = _synthetic_ms(flops, params + cout * (hw / s) ** 2 + elems)
        elif kernel == "fc":
            cin, cout = int(rng.integers(8, 4097)), int(rng.integers(8, 4097))
            flop = (2 * cin + 1) * cout
            x, y = [cin, cout, flop / 2e6, flop / 1e6], _synthetic_ms(flop, cin * cout + cin + cout)
        elif kernel in ("maxpool", "avgpool"):
            ks = int(rng.choice([2, 3]))
            x, y = [hw, cin, cin, ks, s], _synthetic_ms(elems * ks * ks / s / s, elems * (1 + 1 / s / s))
        elif kernel in ("add", "addrelu"):
            x, y = [hw, cin, cin], _synthetic_ms(elems, 3 * elems)
        elif kernel == "concat":
            branches = int(rng.integers(2, 5))
            cs = [int(rng.choice(chans)) for _ in range(branches)]
            total = hw * hw * sum(cs)
            x, y = ([hw, branches, *cs] + [0] * 4)[:6], _synthetic_ms(0, 2 * total)
        elif kernel == "se":
            x, y = [hw, cin], _synthetic_ms(2 * elems + 4 * cin * cin, 3 * elems)
        elif kernel == "hswish":
            x, y = [hw, cin], _synthetic_ms(4 * elems, 2 * elems)
        else:  # relu, bn, bnrelu, global-avgpool, channelshuffle, split: [inputh, cin]
            x, y = [hw, cin], _synthetic_ms(elems, 2 * elems)
        xs.append(x)
        ys.append(y)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def build_custom_predictor(
    folder: str | os.PathLike,
    name: str,
    kernels: Sequence[str] = DEFAULT_CUSTOM_KERNELS,
    *,
    category: str = "cpu",
    version: float = 1.0,
    fusion_rules: Mapping[str, Mapping[str, bool]] | None = None,
    n_samples: int = 300,
    seed: int = 0,
) -> Path:
    """Write a real nn-Meter predictor package into ``folder``: ``<kernel>.pkl`` (scikit-learn
    RandomForestRegressor, what nn-Meter unpickles and calls ``.predict(features)`` on),
    ``fusion_rules.json`` and ``meta.yaml``. Returns the meta.yaml path.

    The regressors are fitted on SYNTHETIC latencies of a made-up device
    (:data:`SYNTHETIC_GFLOPS`, :data:`SYNTHETIC_GB_S`): test plumbing, not a hardware model.
    """
    import yaml
    from sklearn.ensemble import RandomForestRegressor

    if name in BUILTIN_PREDICTORS:
        raise ValueError(f"{name!r} is a built-in nn-Meter predictor name; pick another")
    folder = Path(folder).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for kernel in kernels:
        x, y = _synthetic_samples(kernel, rng, n_samples)
        regressor = RandomForestRegressor(n_estimators=16, min_samples_leaf=2, random_state=seed)
        regressor.fit(x, y)
        with open(folder / f"{kernel}.pkl", "wb") as fp:
            pickle.dump(regressor, fp)
    with open(folder / FUSION_RULES_FILE, "w") as fp:
        json.dump(dict(fusion_rules or DEFAULT_FUSION_RULES), fp, indent=2)
    meta = {
        "name": name,
        "version": float(version),
        "category": category,
        "package_location": str(folder),
        "kernel_predictors": list(kernels),
    }
    meta_path = folder / "meta.yaml"
    with open(meta_path, "w") as fp:
        yaml.safe_dump(meta, fp, sort_keys=False)
    return meta_path


_CLI_SNIPPET = (
    "import sys, warnings; warnings.simplefilter('ignore');"
    "from nn_meter.utils.nn_meter_cli.interface import nn_meter_cli;"
    "sys.argv = ['nn-meter', 'register', '--predictor', sys.argv[1]]; nn_meter_cli()"
)


def register_custom_predictor(
    meta_yaml: str | os.PathLike,
    home: str | os.PathLike | None = None,
    *,
    via_cli: bool = False,
) -> str:
    """Register a predictor package with nn-Meter's own registration so that
    ``load_latency_predictor(name)`` finds it (offline) under ``home``. Returns its name.

    ``via_cli=False`` calls ``nn_meter.utils.nn_meter_cli.registry.register_predictor`` (what
    ``nn-meter register --predictor`` runs) in this process with nn-Meter's config globals
    pointed at ``home``; ``via_cli=True`` runs the ``nn-meter register --predictor meta.yaml``
    CLI in a subprocess with ``HOME=home``. An earlier registration of the same name is removed
    first (nn-Meter would otherwise keep both entries)."""
    meta_path = Path(meta_yaml).expanduser().absolute()
    meta = _read_yaml(meta_path) or {}
    name = meta.get("name")
    if not name or "package_location" not in meta or "kernel_predictors" not in meta:
        raise ValueError(f"{meta_path} lacks name / package_location / kernel_predictors")
    if name in BUILTIN_PREDICTORS:
        raise ValueError(f"refusing to register over the built-in predictor {name!r}")
    folder = Path(meta["package_location"])
    missing = [f"{k}.pkl" for k in meta["kernel_predictors"] if not (folder / f"{k}.pkl").is_file()]
    missing += [] if (folder / FUSION_RULES_FILE).is_file() else [FUSION_RULES_FILE]
    if missing:
        raise PredictorUnavailableError(f"predictor package {folder} lacks {', '.join(missing)}")

    with _nnmeter_session(home):
        _ensure_user_config(home)
        _unregister(name, home)
        if via_cli:
            env = {**os.environ, "HOME": str(_home(home)), "USERPROFILE": str(_home(home))}
            done = subprocess.run(
                [sys.executable, "-c", _CLI_SNIPPET, str(meta_path)],
                env=env, capture_output=True, text=True, timeout=300,
            )
            if done.returncode != 0:
                raise RuntimeError(f"nn-meter register failed ({done.returncode}): {done.stderr[-2000:]}")
        else:
            from nn_meter.utils.nn_meter_cli import registry

            registry.register_predictor(str(meta_path))
    if predictor_entry(name, home) is None:
        raise RuntimeError(f"nn-Meter registration of {name!r} left no entry in {config_folder(home)}")
    return name


def _unregister(name: str, home: str | os.PathLike | None) -> None:
    from nn_meter.utils.nn_meter_cli import registry

    for _ in range(100):  # nn-Meter's unregister skips adjacent duplicates; repeat until gone
        if predictor_entry(name, home) is None:
            return
        registry.unregister_predictor(name, None)


def unregister_custom_predictor(name: str, home: str | os.PathLike | None = None) -> None:
    """Remove a registered custom predictor (nn-Meter's own unregister)."""
    if name in BUILTIN_PREDICTORS:
        raise ValueError(f"refusing to unregister the built-in predictor {name!r}")
    with _nnmeter_session(home):
        _ensure_user_config(home)
        _unregister(name, home)
