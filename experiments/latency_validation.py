"""Can the latency tables be trusted? Stand-in calibration, table additivity, and latency ranges per profile.

1. Calibration: each stand-in vs nn-Meter's own published predictions for 18 CNNs
   (leave-one-out: every model predicted by constants fitted without it).
2. Additivity: for random architectures of the default space, the lookup-table sum vs the
   whole network priced by the same backend, and on ``host`` vs the measured whole network.
   Reported as the share within +-10% (nn-Meter's metric).
3. The default space's latency range on every profile.

    python -m experiments.latency_validation [--archs 20] [--seed 0] [--skip-host]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from latency.kernels import trace_kernels
from latency.lut import deployment_space, get_table
from latency.nnmeter import builtin_available
from latency.profiles import load_profile, resolve_predictor
from latency.standin import StandinPredictor, fit_standins, loo_summary
from search_spaces.arch import build_net
from search_spaces.spaces import get_space

NN_METER_DEVICES = {"cpu": "cortexA76cpu_tflite21", "vpu": "myriadvpu_openvino2019r2"}


def calibration() -> tuple[pd.DataFrame, pd.DataFrame]:
    _, report = fit_standins()
    table = report.pivot(index="model", columns="device", values="loo_error_pct")
    return report, table


def additivity(space_name: str = "quadra", devices=("cpu", "vpu", "gpu", "host"), n_archs: int = 20,
               seed: int = 0) -> pd.DataFrame:
    space = get_space(space_name)
    archs = [space.random_arch(seed + i) for i in range(n_archs)]
    rows = []
    kernels_cache: dict[int, list] = {}
    for name in devices:
        profile = load_profile(name)
        predictor = resolve_predictor(profile)
        table = get_table(space, profile, predictor)
        dep_space = deployment_space(space, profile)
        for i, arch in enumerate(archs):
            dep = dep_space.arch(arch.choices)
            lut_ms = table.arch_ms(dep)
            if isinstance(predictor, StandinPredictor):  # trace once, price on every stand-in device
                if i not in kernels_cache:
                    kernels_cache[i] = trace_kernels(build_net(dep).eval(), profile.input_shape)
                whole = predictor.kernels_ms(kernels_cache[i])
            else:
                whole = predictor.module_ms(build_net(dep).eval(), profile.input_shape).ms
            rows.append({"device": name, "arch": i, "predictor": predictor.name, "table_ms": lut_ms,
                         "whole_ms": whole, "error_pct": 100 * (lut_ms - whole) / whole})
    return pd.DataFrame(rows)


def ranges(space_name: str = "quadra", devices=("cpu", "vpu", "gpu", "host")) -> pd.DataFrame:
    space = get_space(space_name)
    rows = []
    for name in devices:
        t = get_table(space, load_profile(name))
        lo, hi = t.range_ms()
        rows.append({"device": name, "min_ms": lo, "max_ms": hi, "predictor": t.predictor,
                     "provenance": t.provenance})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-host", action="store_true", help="skip the measured host profile")
    args = ap.parse_args(argv)
    fmt = lambda v: f"{v:.2f}"  # noqa: E731
    pd.set_option("display.width", 200)

    print("nn-Meter built-in predictor files present:",
          {d: builtin_available(p) for d, p in NN_METER_DEVICES.items()},
          "-> numbers below come from our calibrated stand-ins, not from nn-Meter")
    report, _ = calibration()
    print("\n== 1. Stand-in calibration vs nn-Meter's own predictions (ms, leave-one-out) ==")
    cols = ["model", "device", "reference_ms", "loo_ms", "loo_error_pct"]
    print(report[cols].rename(columns={"reference_ms": "nn-Meter_ms", "loo_ms": "standin_ms",
                                       "loo_error_pct": "error_%"}).to_string(index=False, float_format=fmt))
    print("\nper device:")
    print(loo_summary(report).to_string(float_format=fmt))

    devices = ("cpu", "vpu", "gpu") if args.skip_host else ("cpu", "vpu", "gpu", "host")
    add = additivity(devices=devices, n_archs=args.archs, seed=args.seed)
    print(f"\n== 2. Additivity: table sum vs whole network, {args.archs} random 'quadra' architectures ==")
    summary = add.groupby("device").agg(
        predictor=("predictor", "first"),
        mean_abs_error_pct=("error_pct", lambda e: float(np.mean(np.abs(e)))),
        max_abs_error_pct=("error_pct", lambda e: float(np.max(np.abs(e)))),
        within_10pct=("error_pct", lambda e: float(np.mean(np.abs(e) <= 10))))
    print(summary.to_string(float_format=fmt))

    print("\n== 3. Latency range of the default 'quadra' space per profile (deployment 1x3x224x224) ==")
    r = ranges(devices=devices)
    print(r.to_string(index=False, float_format=fmt))
    vpu = r.set_index("device").loc["vpu"]
    ok = vpu.min_ms <= 30.0 <= vpu.max_ms
    print(f"30 ms inside the vpu range: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
