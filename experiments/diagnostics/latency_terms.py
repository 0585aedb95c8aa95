"""Which cost terms does the measured data support? Every term tried for the A76 and VPU stand-ins, with its CV error.

    python -m experiments.diagnostics.latency_terms [--out experiments/results/latency_terms]

Each trial refits one device on both sources at once exactly as ``python -m latency.standin cmd=fit`` does (scipy
least squares on the relative error, the 18 reference CNNs and the 1,007 measured NAS-Bench-201 networks each half
of the total weight) with one set of terms and one fusion rule, and reports the 5-fold cross-validated error on the
measured half (MAPE, share within +-10%, Spearman, median ratio) and the leave-one-out MAPE on the 18 CNNs. Trials:

* cost model 2's terms refitted on both sources (old fusion rules), then the steps that led to cost model 3;
* cost model 3 (the committed terms) plus each candidate term alone, and minus each of its own terms;
* the fusion variants: a ReLU fused only into a producer that has no other consumer (``single``), a ReLU fused into
  a pool (``pool``, cost model 3), both.

Candidate terms (per kernel; "extra" = on top of the model's terms for that kernel): per-MAC and per-kernel extras of
1x1 convs, per-MAC extra of 3x3+ convs, bytes of 1x1 convs, weight bytes and activation bytes of convs apart, a
small-map per-MAC extra (x min(1, 196 / (H W))), per-output-pixel and 1024 / (H W) per-conv terms, per-output-channel
and per-input-channel terms, per-type bytes and per-type kernel counts of add / bn / activation / pool / global pool
/ other memory-bound kernels, per-channel elementwise terms. Calibrated stand-ins, NOT nn-Meter.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.markdown import md_table, report
from latency.kernels import BYTES_PER_ELEMENT, Kernel, trace_kernels
from latency.nb201 import INPUT_SHAPE, FoldedCell, build_folded, fold_cell, parse_arch, read_measured
from latency.reference_nets import REFERENCE_NETS, build
from latency.standin import (
    CV_FOLDS,
    DEVICE_FEATURES,
    MEASURED_KEYS,
    PEAK_DRAM_BANDWIDTH,
    REFERENCE_INPUT_SHAPE,
    REFERENCE_ONLY_FEATURES,
    accuracy,
    read_reference,
    solve_relative,
)

OUT = Path(__file__).resolve().parents[1] / "results" / "latency_terms"
FUSIONS = ("model 2", "single", "pool", "pool+single")
_ACT_PRODUCERS = {"conv", "dwconv", "fc", "bn", "add"}


def _fused(ks: Sequence[Kernel], fusion: str) -> list[bool]:
    """Cost model 2's fusion (bn into conv/fc, ReLU into conv/fc/bn/add), with the ``fusion`` variant."""
    producer = {k.out_id: k for k in ks}
    consumers: dict[int, int] = {}
    for k in ks:
        for i in k.in_ids:
            consumers[i] = consumers.get(i, 0) + 1
    out = []
    for k in ks:
        p = producer.get(k.in_ids[0]) if k.in_ids else None
        fused = False
        if p is not None and k.type == "bn":
            fused = p.type in ("conv", "dwconv", "fc")
        elif p is not None and k.type == "relu" and k.op in ("relu", "relu6", "hardtanh"):
            fused = p.type in _ACT_PRODUCERS or ("pool" in fusion and p.type == "pool")
            if "single" in fusion and consumers.get(p.out_id, 0) > 1:
                fused = False
        out.append(fused)
    return out


def candidate_features(ks: Sequence[Kernel], fusion: str) -> dict[str, float]:
    """Every candidate term summed over a network's unfused kernels (names of latency.standin where they exist)."""
    f: dict[str, float] = {}

    def add(name: str, v: float) -> None:
        f[name] = f.get(name, 0.0) + float(v)

    first = True
    for k, fused in zip(ks, _fused(ks, fusion), strict=True):
        if fused:
            continue
        if first and 0 in k.in_ids and len(k.input_shape) == 4 and k.input_shape[1] <= 4:
            add("n_model", 1)
        first = False
        out = k.output_shape
        hw = out[2] * out[3] if len(out) == 4 else 1
        if k.type == "conv":
            wb = BYTES_PER_ELEMENT * k.params
            for name, v in (("conv_macs", k.macs), ("conv_bytes", k.bytes), ("n_conv", 1), ("conv_weight_bytes", wb),
                            ("conv_act_bytes", k.bytes - wb), ("conv_cout", out[1]), ("conv_cin", k.input_shape[1]),
                            ("conv_small_map_macs", k.macs * min(1.0, 196.0 / hw)), ("conv_out_pixels", hw),
                            ("conv_inv_hw", 1024.0 / hw)):
                add(name, v)
            if k.kernel_size > 1:
                add("conv_im2col_bytes", BYTES_PER_ELEMENT * hw * out[0] * k.kernel_size ** 2
                    * (k.input_shape[1] // max(k.groups, 1)))
                add("conv_kxk_macs", k.macs)
            else:
                add("conv1x1_macs", k.macs)
                add("n_conv1x1", 1)
                add("conv1x1_bytes", k.bytes)
            if k.stride > 1:
                add("conv_strided_macs", k.macs)
        elif k.type == "dwconv":
            add("dw_macs", k.macs)
            add("conv_bytes", k.bytes)
            add("n_dw", 1)
        elif k.type == "fc":
            add("fc_bytes", k.bytes)
            add("n_conv", 1)
        else:
            add("mem_bytes", k.bytes)
            add("n_mem", 1)
            cls = {"pool": "pool", "add": "add", "bn": "bn", "relu": "act", "gelu": "act",
                   "global_pool": "gpool"}.get(k.type, "other")
            add(f"{cls}_bytes", k.bytes)
            add(f"n_{cls}", 1)
            if k.type == "pool":
                add("pool_window_bytes", BYTES_PER_ELEMENT * np.prod(out) * k.kernel_size ** 2)
            if k.type in ("add", "bn", "relu", "mul"):
                add("elt_bytes", k.bytes)
                add("n_elt", 1)
                add("elt_channels", k.input_shape[1] if len(k.input_shape) > 1 else 0)
    return f


@functools.cache
def _nb201_kernels(folded: FoldedCell) -> list[Kernel]:
    return trace_kernels(build_folded(folded), INPUT_SHAPE)


@functools.cache
def _ref_kernels(name: str) -> list[Kernel]:
    return trace_kernels(build(name), REFERENCE_INPUT_SHAPE)


def design(device_key: str, fusion: str) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    """(measured features, measured ms, reference features, reference ms) under ``fusion``."""
    df = read_measured(MEASURED_KEYS[device_key])
    folded = [fold_cell(parse_arch(a)) for a in df["arch_str"]]
    rows = {f: candidate_features(_nb201_kernels(f), fusion) for f in set(folded)}
    Xm = pd.DataFrame([rows[f] for f in folded]).fillna(0.0)
    ref = read_reference()
    r = ref[ref["predictor"] == device_key].set_index("model_name")["latency"]
    r = r[[m for m in REFERENCE_NETS if m in r.index]]
    Xr = pd.DataFrame([candidate_features(_ref_kernels(m), fusion) for m in r.index]).fillna(0.0)
    cols = sorted(set(Xm) | set(Xr))
    return (Xm.reindex(columns=cols, fill_value=0.0), df["measured_ms"].to_numpy(float),
            Xr.reindex(columns=cols, fill_value=0.0), r.to_numpy(float))


def trial(data: tuple, device_key: str, terms: Sequence[str], folds: int = CV_FOLDS, seed: int = 0) -> dict:
    """5-fold CV on the measured rows and LOO on the 18 CNNs of one term set, as latency.standin fits."""
    Xm_df, ym, Xr_df, yr = data
    Xm = Xm_df.reindex(columns=list(terms), fill_value=0.0).to_numpy()
    Xr = Xr_df.reindex(columns=list(terms), fill_value=0.0).to_numpy()
    lb = np.array([1e3 / PEAK_DRAM_BANDWIDTH[device_key] if t == "mem_bytes" else 0.0 for t in terms])
    wr = np.full(len(yr), np.sqrt(len(ym) / len(yr)))

    def solve(keep_r: np.ndarray, keep_m: np.ndarray) -> np.ndarray:
        return solve_relative(np.vstack([Xr[keep_r], Xm[keep_m]]), np.concatenate([yr[keep_r], ym[keep_m]]), lb,
                              np.concatenate([wr[keep_r], np.ones(int(keep_m.sum()))]))

    cv = np.zeros(len(ym))
    fold = np.random.default_rng(seed).permutation(len(ym)) % folds
    for f in range(folds):
        cv[fold == f] = Xm[fold == f] @ solve(np.ones(len(yr), bool), fold != f)
    loo = np.array([Xr[i] @ solve(np.arange(len(yr)) != i, np.ones(len(ym), bool)) for i in range(len(yr))])
    a = accuracy(cv, ym)
    return {"cv_mape_pct": a["mape_pct"], "cv_within_10_pct": a["within_10_pct"], "cv_spearman": a["spearman"],
            "cv_median_ratio": a["median_ratio"], "ref_loo_mape_pct": float(np.mean(np.abs(loo - yr) / yr) * 100)}


def trials(device_key: str) -> pd.DataFrame:
    final = list(DEVICE_FEATURES[device_key])
    model2 = list(REFERENCE_ONLY_FEATURES.get(device_key, final[:8]))
    data = {f: design(device_key, f) for f in FUSIONS}
    rows = []

    def run(step: str, terms: Sequence[str], fusion: str, term: str = "") -> None:
        rows.append({"device": device_key, "step": step, "term": term, "fusion": fusion,
                     "n_terms": len(terms), **trial(data[fusion], device_key, terms)})

    run("model 2 terms, refitted on both sources", model2, "model 2")
    run("+ n_model (fixed per-model cost)", [*model2, "n_model"], "model 2", "n_model")
    run("+ ReLU fused into pools", [*model2, "n_model"], "pool", "fusion")
    run("cost model 3 (committed)", final, "pool")
    for fusion in ("single", "pool+single", "model 2"):
        run(f"cost model 3 terms, fusion {fusion}", final, fusion, "fusion")
    for t in [c for c in data["pool"][0].columns if c not in final]:
        run("cost model 3 + term", [*final, t], "pool", t)
    for t in final:
        run("cost model 3 - term", [x for x in final if x != t], "pool", t)
    return pd.DataFrame(rows)


def run(out: Path = OUT, devices: Sequence[str] = tuple(MEASURED_KEYS)) -> pd.DataFrame:
    df = pd.concat([trials(d) for d in devices], ignore_index=True)
    lines = ["# Cost terms tried for the measured-device stand-ins (`python -m experiments.diagnostics.latency_terms`)",
             "", "Each row refits one device on both sources (18 nn-Meter reference CNNs + 1,007 measured "
             "NAS-Bench-201 networks, each half of the weight) and reports the 5-fold CV error on the measured half "
             "and the leave-one-out MAPE on the 18 CNNs. Calibrated stand-ins, NOT nn-Meter.", ""]
    for dev, g in df.groupby("device", sort=False):
        t = g.drop(columns="device").copy()
        for c in ("cv_mape_pct", "cv_within_10_pct", "ref_loo_mape_pct"):
            t[c] = t[c].map(lambda v: f"{v:.2f}")
        for c in ("cv_spearman", "cv_median_ratio"):
            t[c] = t[c].map(lambda v: f"{v:.3f}")
        lines += [f"## {dev}", "", md_table(t), ""]
    report(out, df, lines)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    run(args.out)


if __name__ == "__main__":
    main()
