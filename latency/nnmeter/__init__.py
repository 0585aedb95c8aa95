"""The bridge to nn-Meter 2.0, a package of four concerns:

* :mod:`~latency.nnmeter.paths` -- where nn-Meter keeps configs and predictor files (no ``nn_meter`` import);
* :mod:`~latency.nnmeter.session` -- running nn-Meter code against a given HOME without downloads, and
  registering custom predictor packages: the only module of QuadraNAS that imports ``nn_meter``;
* :mod:`~latency.nnmeter.onnx_pricing` -- torch -> ONNX and the rewrites nn-Meter needs to price a graph;
* :mod:`~latency.nnmeter.predictor` -- :class:`NNMeterPredictor`, nn-Meter's prediction plus a memory-bound
  correction for the ops it prices at 0 ms.

``nn_meter`` (and ``onnx``) are imported lazily inside functions, so ``import latency.nnmeter`` is cheap and
works where nn-Meter is broken or absent (then the device profiles use their stand-ins). Predictor packages
with synthetic regressors, for tests, live in ``tests/latency/synthetic_predictors.py``.
"""

from latency.nnmeter.errors import (
    EXTRA_HINT,
    NNMeterNotInstalledError,
    NNMeterUnsupportedGraphError,
    PredictorUnavailableError,
    nnmeter_installed,
)
from latency.nnmeter.onnx_pricing import (
    FREE_OP_TYPES,
    ONNX_OPSET,
    PRICING_ONLY_PREFIX,
    nnmeter_pricing_graph,
    to_onnx_model,
)
from latency.nnmeter.paths import (
    BUILTIN_PREDICTORS,
    FUSION_RULES_FILE,
    builtin_available,
    config_folder,
    data_folder,
    missing_predictor_files,
    predictor_available,
    predictor_dir,
    predictor_entries,
    predictor_entry,
)
from latency.nnmeter.predictor import (
    DEFAULT_MEMORY_MODELS,
    DEFAULT_OP_FACTORS,
    ExtraOpMs,
    MemoryBoundOpModel,
    NNMeterBreakdown,
    NNMeterPredictor,
    UnpricedOp,
    default_extra_op_model,
)
from latency.nnmeter.session import (
    load_latency_predictor,
    nnmeter_session,
    register_custom_predictor,
    unregister_custom_predictor,
)

__all__ = [
    "BUILTIN_PREDICTORS",
    "DEFAULT_MEMORY_MODELS",
    "DEFAULT_OP_FACTORS",
    "EXTRA_HINT",
    "FREE_OP_TYPES",
    "FUSION_RULES_FILE",
    "ONNX_OPSET",
    "PRICING_ONLY_PREFIX",
    "ExtraOpMs",
    "MemoryBoundOpModel",
    "NNMeterBreakdown",
    "NNMeterNotInstalledError",
    "NNMeterPredictor",
    "NNMeterUnsupportedGraphError",
    "PredictorUnavailableError",
    "UnpricedOp",
    "builtin_available",
    "config_folder",
    "data_folder",
    "default_extra_op_model",
    "load_latency_predictor",
    "missing_predictor_files",
    "nnmeter_installed",
    "nnmeter_pricing_graph",
    "nnmeter_session",
    "predictor_available",
    "predictor_dir",
    "predictor_entries",
    "predictor_entry",
    "register_custom_predictor",
    "to_onnx_model",
    "unregister_custom_predictor",
]
