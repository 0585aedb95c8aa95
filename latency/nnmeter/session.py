"""Running nn-Meter code against a given HOME, without downloads: the ONLY module of QuadraNAS that
imports ``nn_meter`` (always inside functions, so importing this module stays cheap).

nn-Meter computes its config and data paths at import time (see :mod:`latency.nnmeter.paths`), so
:func:`nnmeter_session` patches those module globals for the duration of a call and replaces its
downloader by one that raises. Custom predictor packages (a folder of ``<kernel>.pkl`` regressors,
``fusion_rules.json`` and ``meta.yaml``) are registered with nn-Meter's own registration
(:func:`register_custom_predictor`), so ``load_latency_predictor(name)`` finds them offline.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from latency.nnmeter.errors import PredictorUnavailableError, require_module
from latency.nnmeter.paths import (
    BUILTIN_PREDICTORS,
    FUSION_RULES_FILE,
    config_folder,
    home_path,
    missing_predictor_files,
    predictor_dir,
    predictor_entry,
    read_yaml,
    unavailable_message,
)

_SESSION_LOCK = threading.RLock()
REGISTER_TIMEOUT_S = 300  # the `nn-meter register` subprocess
MAX_UNREGISTER_ROUNDS = 100  # nn-Meter's unregister removes one of adjacent duplicates per call


def _refuse_download(urladdr: str, ppath: str, *args: Any, **kwargs: Any) -> None:
    raise PredictorUnavailableError(
        f"nn-Meter tried to download {urladdr} into {ppath}; QuadraNAS never downloads predictor "
        "files. Put the predictor's <kernel>.pkl files and fusion_rules.json there yourself, or "
        "use the calibrated stand-in."
    )


@contextlib.contextmanager
def nnmeter_session(home: str | os.PathLike | None) -> Iterator[Any]:
    """Import nn_meter; point its config/data globals at ``home``; block its downloader;
    quieten its logger. Restores everything on exit. Yields the ``nn_meter`` module."""
    require_module("nn_meter", "nn-Meter latency prediction")
    with _SESSION_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation on import
            import nn_meter
            import nn_meter.predictor.utils
            import nn_meter.utils.config_manager
            import nn_meter.utils.nn_meter_cli.registry  # noqa: F401

        base = home_path(home) / ".nn_meter"
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
    Call inside :func:`nnmeter_session`."""
    import yaml
    from nn_meter.utils import config_manager

    folder = config_folder(home)
    if not (folder / "predictors.yaml").is_file():
        config_manager.create_user_configs()  # copies packaged yaml + writes settings.yaml
    if not (folder / "settings.yaml").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "settings.yaml", "w") as fp:
            yaml.safe_dump({"data_folder": str(home_path(home) / ".nn_meter" / "data")}, fp)


def load_latency_predictor(name: str, home: str | os.PathLike | None = None,
                           version: float | None = None) -> Any:
    """``nn_meter.load_latency_predictor(name)`` under ``home``, but only when every file is on
    disk: raises :class:`PredictorUnavailableError` instead of downloading."""
    if missing_predictor_files(name, home):
        raise PredictorUnavailableError(unavailable_message(name, home))
    require_module("nn_meter", f"nn-Meter predictor {name!r}")
    with nnmeter_session(home) as nn_meter:
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


def priced_node_names(nm_predictor: Any) -> set[str]:
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
    meta = read_yaml(meta_path) or {}
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

    with nnmeter_session(home):
        _ensure_user_config(home)
        _unregister(name, home)
        if via_cli:
            env = {**os.environ, "HOME": str(home_path(home)), "USERPROFILE": str(home_path(home))}
            done = subprocess.run(
                [sys.executable, "-c", _CLI_SNIPPET, str(meta_path)],
                env=env, capture_output=True, text=True, timeout=REGISTER_TIMEOUT_S,
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
    """Remove every predictors.yaml entry of ``name``. Call inside :func:`nnmeter_session`."""
    from nn_meter.utils.nn_meter_cli import registry

    for _ in range(MAX_UNREGISTER_ROUNDS):  # nn-Meter's unregister skips adjacent duplicates
        if predictor_entry(name, home) is None:
            return
        registry.unregister_predictor(name, None)


def unregister_custom_predictor(name: str, home: str | os.PathLike | None = None) -> None:
    """Remove a registered custom predictor (nn-Meter's own unregister)."""
    if name in BUILTIN_PREDICTORS:
        raise ValueError(f"refusing to unregister the built-in predictor {name!r}")
    with nnmeter_session(home):
        _ensure_user_config(home)
        _unregister(name, home)


def detect_kernels(model: Any, kernel_predictors: frozenset[str] | set[str],
                   fusion_rules: dict | None = None) -> list[dict]:
    """nn-Meter's own view of an ONNX ``model``, offline and without predictor files: its ONNX-to-IR
    converter (``ir_converter.onnx_converter.OnnxConverter``), its ``KernelDetector`` with ``fusion_rules``
    (a ``fusion_rules.json`` mapping; default :data:`latency.nnmeter.semantics.ASSUMED_FUSION_RULES`) and its
    feature extraction (``prediction.extract_feature.get_predict_features``). One dict per detected kernel,
    in nn-Meter's order: ``op`` (fused type string, e.g. ``"dwconv"``, ``"add-relu"``), ``nodes`` (the ONNX
    node names in it), ``kernel`` (the regressor name nn-Meter looks up), ``features`` (its feature vector,
    None when nn-Meter builds none), ``input_tensors`` / ``cin`` / ``cout`` / ``inputh`` / ``ks`` /
    ``strides`` as nn-Meter recorded them, and ``priced`` (features built AND the regressor is in
    ``kernel_predictors``; else nn-Meter prices the kernel at 0 ms)."""
    import json
    import tempfile

    from latency.nnmeter.semantics import ASSUMED_FUSION_RULES, nnmeter_kernel_name

    require_module("nn_meter", "nn-Meter kernel detection")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nn_meter.ir_converter.onnx_converter import OnnxConverter
        from nn_meter.kernel_detector import KernelDetector
        from nn_meter.kernel_detector.utils.constants import DUMMY_TYPES
        from nn_meter.predictor.prediction.extract_feature import get_predict_features
    logger = logging.getLogger("nn-Meter")
    old_level = logger.level
    logger.setLevel(logging.ERROR)
    with _SESSION_LOCK, tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / FUSION_RULES_FILE
        rules.write_text(json.dumps(ASSUMED_FUSION_RULES if fusion_rules is None else fusion_rules))
        try:
            graph = OnnxConverter(model).convert()
            kd = KernelDetector(str(rules))
            kd.load_graph(graph)
            kernels = iter(kd.get_kernels())
            out = []
            for bb in kd.bbs:
                types = [kd.model_graph.get_node_type(n) for n in bb]
                if not [t for t in types if t and t not in DUMMY_TYPES]:
                    continue  # KernelDetector._bb_to_kernel makes no kernel of these
                kernel = next(kernels)
                try:
                    feats = get_predict_features([kernel])
                except (KeyError, IndexError, TypeError):
                    feats = {}
                features = next(iter(feats[0].values())) if feats else None
                name = nnmeter_kernel_name(kernel["op"])
                out.append({
                    "op": kernel["op"], "nodes": [p for n in bb for p in n.split(";")], "kernel": name,
                    "features": None if features is None else [float(v) for v in features],
                    **{k: kernel[k] for k in ("input_tensors", "cin", "cout", "inputh", "ks", "strides")
                       if k in kernel},
                    "priced": features is not None and name in kernel_predictors,
                })
            return out
        finally:
            logger.setLevel(old_level)
