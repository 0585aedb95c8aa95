"""Test-only nn-Meter predictor packages whose regressors are fitted on SYNTHETIC latencies (FLOPs and
bytes of a made-up device): plumbing so the nn-Meter bridge can be tested offline without nn-Meter's real
predictors, not a model of any hardware. Register a package with
:func:`latency.nnmeter.register_custom_predictor`.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from latency.nnmeter import BUILTIN_PREDICTORS, FUSION_RULES_FILE
from latency.nnmeter.semantics import ASSUMED_FUSION_RULES

DEFAULT_CUSTOM_KERNELS: tuple[str, ...] = (
    "conv-bn-relu", "dwconv-bn-relu", "fc", "global-avgpool", "hswish", "relu", "se", "split",
    "add", "addrelu", "maxpool", "avgpool", "bn", "bnrelu", "channelshuffle", "concat",
)  # the cortexA76cpu_tflite21 kernel list

DEFAULT_FUSION_RULES = ASSUMED_FUSION_RULES  # the rules the product assumes nn-Meter's predictors use

# The made-up device behind the synthetic regressors.
SYNTHETIC_GFLOPS = 20.0
SYNTHETIC_GB_S = 5.0
SYNTHETIC_OVERHEAD_MS = 0.005


def _synthetic_ms(flops: float, elements: float) -> float:
    """Latency of the made-up device: compute at SYNTHETIC_GFLOPS, fp32 traffic at SYNTHETIC_GB_S, overhead."""
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
