"""How close are the A76 and VPU stand-ins to latencies MEASURED on the devices? Before and after cost model 3.

    python -m experiments.measured_latency [--out experiments/results/measured_latency]

Two sources, side by side, per device (cpu = Cortex-A76 TFLite 2.1, vpu = Myriad OpenVINO 2019R2) and pricing:

* **NB201**: the packaged half (even ids) of nn-Meter's dataset, whole NAS-Bench-201 networks at 32 px measured on
  the devices (:mod:`latency.nb201`);
* **reference**: nn-Meter's own predictions for its 18 reference CNNs at 224 px (``latency/data/``).

``before`` is the stand-in of cost model 2 (``results/standin_constants_before_issue39.json``; its NB201
predictions, made by that code, are frozen in ``results/measured_latency/nb201_before_issue39.csv`` because model 3
also changed the fusion rules); it never saw the NB201 rows, so its error there is out of sample. ``after`` is the
committed cost model 3, fitted on both sources at once: its held-out error is the 5-fold cross-validated error on
the NB201 half and the leave-one-out error on the 18 CNNs (``pricing=device``, the pricing it is fitted under);
``in-sample`` rows price with the committed constants. Metrics: MAPE, share within +-10%, worst error, Spearman
rank correlation, median predicted / measured; per latency quintile and per cell op mix for NB201. All
predictions are calibrated stand-ins (NOT nn-Meter).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.markdown import md_table, report
from latency.kernels import Kernel, trace_kernels
from latency.nb201 import (
    INPUT_SHAPE,
    MEASURED_DEVICES,
    FoldedCell,
    build_folded,
    fold_cell,
    parse_arch,
    read_measured,
)
from latency.reference_nets import build
from latency.standin import (
    CONSTANTS_PATH,
    REFERENCE_INPUT_SHAPE,
    accuracy,
    fit_all,
    load_standin,
    read_reference,
)

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "measured_latency"
BEFORE_CONSTANTS = RESULTS / "standin_constants_before_issue39.json"
BEFORE_NB201 = OUT / "nb201_before_issue39.csv"
PRICINGS = ("device", "nnmeter")
METRICS = ("n_models", "mape_pct", "within_10_pct", "max_abs_error_pct", "spearman", "median_ratio")


def nb201_frame(device: str) -> pd.DataFrame:
    """The measured rows of ``device`` with each network's folded cell op counts."""
    df = read_measured(device)
    folded = [fold_cell(parse_arch(a)) for a in df["arch_str"]]
    return df.assign(folded=folded, n_conv3x3=[f.count("nor_conv_3x3") for f in folded],
                     n_conv1x1=[f.count("nor_conv_1x1") for f in folded],
                     n_pool=[f.count("avg_pool_3x3") for f in folded])


def price_nb201(df: pd.DataFrame, device: str, pricing: str, constants: Path = CONSTANTS_PATH) -> np.ndarray:
    """Stand-in latency (ms) of every row of ``df`` (traced once per folded cell)."""
    pred = load_standin(MEASURED_DEVICES[device], constants, pricing)
    ms = {f: pred.kernels_ms(_kernels(f)) for f in set(df["folded"])}
    return np.array([ms[f] for f in df["folded"]])


@functools.cache
def _kernels(folded: FoldedCell) -> list[Kernel]:
    return trace_kernels(build_folded(folded), INPUT_SHAPE)


@functools.cache
def _ref_kernels(name: str) -> list[Kernel]:
    return trace_kernels(build(name), REFERENCE_INPUT_SHAPE)


def price_reference(device: str, pricing: str, constants: Path) -> pd.DataFrame:
    """The 18 reference CNNs: nn-Meter's prediction and the stand-in's (in-sample) under ``pricing``."""
    ref = read_reference()
    r = ref[ref["predictor"] == MEASURED_DEVICES[device]].set_index("model_name")["latency"]
    pred = load_standin(MEASURED_DEVICES[device], constants, pricing)
    ours = [pred.kernels_ms(_ref_kernels(m)) for m in r.index]
    return pd.DataFrame({"model": list(r.index), "truth_ms": r.to_numpy(), "predicted_ms": ours})


def _row(device: str, pricing: str, source: str, stand_in: str, held_out: str, pred, truth) -> dict:
    return {"device": device, "pricing": pricing, "source": source, "stand_in": stand_in, "error": held_out,
            **accuracy(np.asarray(pred), np.asarray(truth))}


def predictions() -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """Per device, the NB201 rows with every column of predictions; and the summary rows."""
    _, ref_report, nb_report = fit_all()
    before_nb = pd.read_csv(BEFORE_NB201)
    before_loo = json.loads(BEFORE_CONSTANTS.read_text())["devices"]
    frames, rows = {}, []
    for device, key in MEASURED_DEVICES.items():
        df = nb201_frame(device)
        cv = nb_report[nb_report["device"] == key].set_index("id")["cv_ms"]
        df["after device cv"] = cv.loc[df["id"]].to_numpy()
        for pricing in PRICINGS:
            b = before_nb[(before_nb.device == device) & (before_nb.pricing == pricing)].set_index("id")
            df[f"before {pricing}"] = b.loc[df["id"], "predicted_ms"].to_numpy()
            df[f"after {pricing}"] = price_nb201(df, device, pricing)
        y = df["measured_ms"]
        rows.append(_row(device, "device", "NB201 measured", "after", "5-fold CV", df["after device cv"], y))
        for pricing in PRICINGS:
            rows.append(_row(device, pricing, "NB201 measured", "before", "out of sample", df[f"before {pricing}"], y))
            rows.append(_row(device, pricing, "NB201 measured", "after", "in-sample", df[f"after {pricing}"], y))
        loo = ref_report[ref_report["device"] == key]
        rows.append(_row(device, "device", "18 CNNs nn-Meter", "after", "LOO", loo["loo_ms"], loo["reference_ms"]))
        old = before_loo[key]["loo_error_pct"]
        truth = loo.set_index("model")["reference_ms"]
        rows.append(_row(device, "device", "18 CNNs nn-Meter", "before", "LOO",
                         [truth[m] * (1 + old[m] / 100) for m in truth.index], truth.to_numpy()))
        for pricing in PRICINGS:
            for stand_in, path in (("before", BEFORE_CONSTANTS), ("after", CONSTANTS_PATH)):
                r = price_reference(device, pricing, path)
                rows.append(_row(device, pricing, "18 CNNs nn-Meter", stand_in, "in-sample", r["predicted_ms"],
                                 r["truth_ms"]))
        frames[device] = df
    return frames, rows


def breakdown(frames: dict[str, pd.DataFrame], by: str) -> pd.DataFrame:
    """NB201 metrics per group (``quintile`` of measured latency, or a cell op count), before (device pricing, out
    of sample) and after (5-fold CV)."""
    rows = []
    for device, df in frames.items():
        df = df.assign(quintile=pd.qcut(df["measured_ms"], 5, labels=[f"Q{i}" for i in range(1, 6)]))
        for group, g in df.groupby(by, observed=True, sort=True):
            for stand_in, col in (("before", "before device"), ("after (CV)", "after device cv")):
                a = accuracy(g[col].to_numpy(), g["measured_ms"].to_numpy())
                rows.append({"device": device, by: str(group), "stand_in": stand_in,
                             "measured_ms_mean": float(g["measured_ms"].mean()), **a})
    return pd.DataFrame(rows)


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in ("mape_pct", "within_10_pct", "max_abs_error_pct", "measured_ms_mean"):
        if c in out:
            out[c] = out[c].map(lambda v: f"{v:.1f}")
    for c in ("spearman", "median_ratio"):
        if c in out:
            out[c] = out[c].map(lambda v: "" if np.isnan(v) else f"{v:.3f}")
    return out


def run(out: Path = OUT) -> pd.DataFrame:
    frames, rows = predictions()
    summary = pd.DataFrame(rows)
    quint = breakdown(frames, "quintile")
    mixes = {c: breakdown(frames, c) for c in ("n_conv3x3", "n_pool")}
    lines = ["# Stand-ins vs latencies measured on the devices (`python -m experiments.measured_latency`)", "",
             "Calibrated stand-ins (NOT nn-Meter). NB201: 1,007 NAS-Bench-201 networks per device measured by "
             "nn-Meter's dataset (even ids; 32 px). 18 CNNs: nn-Meter's own predictions (224 px). `before`: cost "
             "model 2 (fitted to the 18 CNNs only); `after`: cost model 3 (both sources at once). `error`: how "
             "the prediction was held out (5-fold CV on NB201, leave-one-out on the CNNs, or in-sample).", "",
             "## Summary", "", md_table(_fmt(summary)), ""]
    for name, table in (("per measured-latency quintile (NB201, pricing=device)", quint),
                        ("per number of 3x3 convs in the folded cell (NB201, pricing=device)", mixes["n_conv3x3"]),
                        ("per number of 3x3 avg pools in the folded cell (NB201, pricing=device)", mixes["n_pool"])):
        lines += [f"## {name[0].upper()}{name[1:]}", "", md_table(_fmt(table)), ""]
    report(out / "summary", summary, lines)
    for name, table in (("quintiles", quint), *mixes.items()):
        table.to_csv(out / f"by_{name}.csv", index=False)
    keep = ["id", "arch_str", "measured_ms", "n_conv3x3", "n_conv1x1", "n_pool", "before device", "before nnmeter",
            "after device", "after nnmeter", "after device cv"]
    pd.concat([f[keep].assign(device=d) for d, f in frames.items()]).to_csv(out / "nb201_predictions.csv",
                                                                           index=False)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    run(args.out)


if __name__ == "__main__":
    main()
