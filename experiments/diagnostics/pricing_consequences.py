"""How many block MACs fit a latency budget, per pricing and per suspected cause? (A dynamic program.)

    python -m experiments.diagnostics.pricing_consequences [--device vpu] [--target-ms 30]

For each search space (``quadra``, ``proxyless``) at its deployment shape (224 px), a dynamic program over the
searchable layers picks one candidate per layer to maximise the blocks' MACs with the table sum (fixed part
included) <= the target. The per-candidate latencies are the stand-in's (calibrated stand-in, NOT nn-Meter)
under these pricings:

* ``device``: every kernel priced (``pricing=device``, the default);
* ``drop-only``: nn-Meter's dropped ops (LN/GELU/Mul/Transpose, on the vpu also Add) at 0 ms, but the fc
  kernels priced over all their rows (a cause alone: the ops nn-Meter does not price);
* ``nnmeter``: ``pricing=nnmeter`` -- the above plus each fc priced as one row, as nn-Meter's fc features do;
* ``nnmeter, no dw overhead``: ``nnmeter`` with the stand-in's per-depthwise-conv constant ``n_dw`` set to 0
  (a probe of the third suspected cause: the stand-in's depthwise cost at small maps / low channel counts).

``device`` and ``nnmeter`` are checked against the cached latency tables of :mod:`latency.lut`. The paper's
anchor (Table III, nn-Meter's VPU predictor): QuadraNet_VPU 312M MACs at 29.9 ms, Proxyless-VPU 275M at 29.9 ms.
MACs here are of the deployment network (1000 classes), blocks only and whole network (stem, transitions, head).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.markdown import md_table, report
from latency.kernels import total_macs, trace_kernels
from latency.lut import deployment_space, get_table
from latency.profiles import load_profile
from latency.standin import StandinPredictor, load_standin, nnmeter_kernels
from search_spaces.arch import build_net, input_shapes
from search_spaces.blocks import SKIP_OPS, make_op
from search_spaces.spaces import get_space

OUT = Path(__file__).resolve().parents[1] / "results" / "pricing_consequences"
DEVICE_KEYS = {"vpu": "myriadvpu_openvino2019r2", "cpu": "cortexA76cpu_tflite21"}
VARIANTS = ("device", "drop-only", "nnmeter", "nnmeter, no dw overhead")
PAPER = {"quadra": (312, 29.9), "proxyless": (275, 29.9)}  # vpu: MACs (M), ms
GRID_MS = 0.001  # latency resolution of the dynamic program (latencies rounded up: never over the target)


def _variant_ms(kernels, variant: str, device_key: str) -> float:
    dev = load_standin(device_key)
    if variant == "device":
        return dev.kernels_ms(kernels)
    if variant == "nnmeter, no dw overhead":
        dev = replace(dev, coefficients={**dev.coefficients, "n_dw": 0.0})
    seen = nnmeter_kernels(kernels, device_key)
    if variant == "drop-only":  # the kept kernels at their real shapes
        return float(sum(dev.kernel_ms(k) for k, v in zip(kernels, seen, strict=True) if v is not None))
    return float(sum(StandinPredictor.kernel_ms(dev, v) for v in seen if v is not None))


def candidate_table(space_name: str, device: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (layer, op): MACs and latency under every variant; and the fixed parts (MACs, ms per variant)."""
    space = get_space(space_name)
    profile = load_profile(device)
    dep = deployment_space(space, profile)
    key = DEVICE_KEYS[device]
    skeleton = build_net(dep.smallest_block_arch())
    shapes = input_shapes(skeleton, batch=1)
    modules = dict(zip([sp.index for sp in dep.macro.layers()], skeleton.layers()))
    number = {index: i for i, index in enumerate(sorted({spec.index for spec in dep.layers()}))}
    rows, cache = [], {}
    for spec in dep.layers():
        shape = shapes[modules[spec.index]]
        for op in dep.candidates(spec):
            ck = (op, spec.in_ch, spec.out_ch, spec.stride, shape)
            if ck not in cache:
                if op in SKIP_OPS:
                    cache[ck] = {"macs": 0, **dict.fromkeys(VARIANTS, 0.0)}
                else:
                    ks = trace_kernels(make_op(op, spec.in_ch, spec.out_ch, spec.stride).eval(), shape)
                    cache[ck] = {"macs": total_macs(ks), **{v: _variant_ms(ks, v, key) for v in VARIANTS}}
            rows.append({"layer": number[spec.index], "op": op, **cache[ck]})
    fixed = []
    for name, mod in skeleton.fixed_parts().items():
        ks = trace_kernels(mod.eval(), shapes[mod])
        fixed.append({"part": name, "macs": total_macs(ks), **{v: _variant_ms(ks, v, key) for v in VARIANTS}})
    return pd.DataFrame(rows), pd.DataFrame(fixed)


def max_macs(cands: pd.DataFrame, budget_ms: float, column: str) -> tuple[float, list[str], float]:
    """(max block MACs, the choices, their latency) with sum of ``column`` <= ``budget_ms`` (knapsack DP)."""
    n = int(math.floor(budget_ms / GRID_MS + 1e-9))
    if n < 0:
        return float("nan"), [], float("nan")
    best = np.zeros(n + 1)  # best MACs with latency <= j cells, over layers so far
    choice = []
    layers = [g for _, g in cands.groupby("layer", sort=True)]
    for g in layers:
        cost = [int(math.ceil(ms / GRID_MS - 1e-9)) for ms in g[column]]
        macs = g.macs.to_numpy(dtype=float)
        new = np.full(n + 1, -np.inf)
        arg = np.zeros(n + 1, dtype=int)
        for i, (c, m) in enumerate(zip(cost, macs, strict=True)):
            if c > n:
                continue
            cand = np.full(n + 1, -np.inf)
            cand[c:] = best[: n + 1 - c] + m
            better = cand > new
            new[better], arg[better] = cand[better], i
        best = new
        choice.append(arg)
    if not np.isfinite(best[n]):
        return float("nan"), [], float("nan")
    j, picks = n, []
    for g, arg in zip(reversed(layers), reversed(choice), strict=True):
        i = arg[j]
        picks.append(g.op.iloc[i])
        j -= int(math.ceil(g[column].iloc[i] / GRID_MS - 1e-9))
    picks.reverse()
    ms = sum(float(g[column].iloc[list(g.op).index(p)]) for g, p in zip(layers, picks, strict=True))
    return float(best[n]), picks, ms


def run(device: str = "vpu", target_ms: float = 30.0, out: Path = OUT) -> pd.DataFrame:
    rows = []
    for space_name in ("quadra", "proxyless"):
        cands, fixed = candidate_table(space_name, device)
        # the cached tables agree with these per-candidate latencies
        for pricing in ("device", "nnmeter"):
            t = get_table(get_space(space_name), load_profile(device, pricing=pricing), progress=False)
            ours = cands.set_index(["layer", "op"])[pricing]
            theirs = t.layers.set_index(["layer", "op"]).latency_ms
            assert np.allclose(ours.loc[theirs.index].to_numpy(), theirs.to_numpy(), rtol=1e-9, atol=1e-9), pricing
            assert math.isclose(fixed[pricing].sum(), t.fixed_ms, rel_tol=1e-9, abs_tol=1e-9), pricing
        for v in VARIANTS:
            fixed_ms = float(fixed[v].sum())
            macs, picks, ms = max_macs(cands, target_ms - fixed_ms, v)
            top = cands.loc[cands.groupby("layer")[v].idxmax()]
            rows.append({"space": space_name, "device": device, "pricing": v, "target_ms": target_ms,
                         "max_block_macs_M": macs / 1e6, "net_macs_M": (macs + fixed.macs.sum()) / 1e6,
                         "table_ms": ms + fixed_ms, "fixed_ms": fixed_ms,
                         "space_max_ms": float(top[v].sum()) + fixed_ms,
                         "blocks": sum(p not in SKIP_OPS for p in picks), "choices": " ".join(picks),
                         "paper_macs_M": PAPER[space_name][0] if device == "vpu" else float("nan")})
    df = pd.DataFrame(rows)
    key = DEVICE_KEYS[device]
    show = df.drop(columns=["choices", "device", "target_ms"])
    lines = [f"# Most block MACs under {device} {target_ms:g} ms, per pricing (`python -m experiments."
             "diagnostics.pricing_consequences`)", "",
             f"Latencies: `standin/{key}` (calibrated stand-in, NOT nn-Meter) per candidate at the deployment shape "
             "(224 px), under each pricing; a dynamic program maximises the searchable blocks' MACs with the table "
             "sum (fixed part included) within the target. `drop-only`: nn-Meter's dropped ops at 0 ms, fc over all "
             "its rows; `nnmeter`: `pricing=nnmeter` (also each fc as one row); `nnmeter, no dw overhead`: the same "
             "with the stand-in's per-depthwise-conv constant n_dw = 0. `net_macs_M` adds stem, transitions and "
             "head (1000 classes). Paper (nn-Meter's VPU predictor): QuadraNet_VPU 312M, Proxyless-VPU 275M, "
             "both at 29.9 ms.", "", md_table(show, floatfmt="{:.4g}"), "", "Choices:", ""]
    lines += [f"- {r.space} / {r.pricing}: `{r.choices}`" for r in df.itertuples()]
    report(out.with_name(f"{out.name}_{device}"), df, lines)
    return df


def export_rows(exports: dict[str, Path]) -> pd.DataFrame:
    """Exported architectures (``label -> arch.json`` of ``nas.search``) priced as table sums under both pricings
    on cpu and vpu, with their deployment MACs / params and the host's measured table sum from the export."""
    from search_spaces.arch import Arch
    from search_spaces.spaces import space_of

    rows = []
    for label, path in exports.items():
        arch = Arch.load(path)
        meta = arch.metadata
        space = space_of(arch)
        row = {"export": label, "searched with": meta["latency_ms"][meta["search"].get("device", "vpu")]["predictor"]
               if "search" in meta else "", "macs_M": meta["deployment"]["macs"] / 1e6,
               "params_M": meta["deployment"]["params"] / 1e6,
               "blocks": sum(c not in SKIP_OPS for c in arch.choices)}
        for dev in ("vpu", "cpu"):
            for pricing in ("device", "nnmeter"):
                profile = load_profile(dev, pricing=pricing)
                t = get_table(space, profile, progress=False)
                row[f"{dev}_ms {pricing}"] = t.arch_ms(deployment_space(space, profile).arch(arch.choices))
        row["host_ms (measured table)"] = meta["latency_ms"].get("host", {}).get("ms", float("nan"))
        row["choices"] = " ".join(arch.choices)
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="vpu", choices=sorted(DEVICE_KEYS))
    parser.add_argument("--target-ms", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--export", action="append", default=[], metavar="LABEL=ARCH_JSON",
                        help="also tabulate these exports under both pricings (repeatable)")
    args = parser.parse_args(argv)
    run(args.device, args.target_ms, args.out)
    if args.export:
        exports = dict(e.split("=", 1) for e in args.export)
        df = export_rows({k: Path(v) for k, v in exports.items()})
        lines = ["# The default search's export per pricing (`python -m nas.search device=vpu latency=30ms "
                 "pricing=...`)", "",
                 "Each export priced as table sums of the calibrated stand-ins (NOT nn-Meter) under both pricings "
                 "(`standin/myriadvpu_openvino2019r2`, `standin/cortexA76cpu_tflite21`); host: the export's table "
                 "sum on this host's measured table (`measured/host-cpu-1threads`, written at search time). MACs / "
                 "params of the deployment network (3x224x224, 1000 classes).", "",
                 md_table(df.drop(columns=["choices"]), floatfmt="{:.4g}"), "", "Choices:", ""]
        lines += [f"- {r.export}: `{r.choices}`" for r in df.itertuples()]
        report(args.out.with_name("pricing_exports_vpu"), df, lines)


if __name__ == "__main__":
    main()
