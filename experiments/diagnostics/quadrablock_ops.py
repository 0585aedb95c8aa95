"""Where does a QuadraBlock's latency go? Per-op cost per stage: stand-ins under each pricing, this host measured.

    python -m experiments.diagnostics.quadrablock_ops [--op quadra_k7_e4] [--repeats 50]

For ``--op`` at each stage's deployment shape (224 px input: 32x56x56, 64x28x28, 128x14x14, 256x7x7, batch 1):

* the vpu and cpu stand-ins (``standin/myriadvpu_openvino2019r2``, ``standin/cortexA76cpu_tflite21``) with
  ``pricing=device`` (every kernel) and ``pricing=nnmeter`` (only the kernels nn-Meter would price), per kernel
  (:meth:`latency.standin.StandinPredictor.per_kernel_ms`) -- calibrated stand-ins, NOT nn-Meter;
* measured on this host: torch eager, 1 thread, ``torch.profiler`` CPU time of each top-level aten op of the
  block's forward (``torch.no_grad``), median over ``--repeats`` forwards after warm-up (QuadDWConv2d's
  ``impl="separate"``: the three depthwise convs as deployed).

Ops, in the block's order: LN1 (with its two permutes: channels-first LayerNorm), the three depthwise convs,
the quadratic product a*b, +c, the layer-scale multiplies (gamma1, gamma2), the residual adds, the permute to
channels-last, LN2, fc1, GELU, fc2, the permute back. On the host a permute is a view (no copy); the copy
happens inside the op that reads it (LayerNorm, the conv), so its time shows up there.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from experiments.markdown import md_table, report
from latency.kernels import Kernel, trace_kernels
from latency.standin import load_standin
from search_spaces.blocks import make_op

OUT = Path(__file__).resolve().parents[1] / "results" / "quadrablock_ops"
STAGES = ((32, 56), (64, 28), (128, 14), (256, 7))
STANDINS = {"vpu": "myriadvpu_openvino2019r2", "cpu": "cortexA76cpu_tflite21"}
CATEGORIES = ("dwconv x3", "mul a*b", "add +c", "layer-scale mul x2", "residual add x2", "layernorm x2",
              "permute x4", "fc1", "gelu", "fc2")


def categorize(types: list[str]) -> list[str]:
    """A category of :data:`CATEGORIES` for each op of a QuadraBlock given its type sequence (kernel types of
    :func:`latency.kernels.trace_kernels` or the same names for aten ops), by position: the first mul after
    the depthwise convs is a*b, the add right after the third conv is +c, other muls are layer scales, other
    adds residuals; fc's are fc1 then fc2."""
    out, seen = [], Counter()
    for t in types:
        seen[t] += 1
        if t == "dwconv":
            out.append("dwconv x3")
        elif t == "mul":
            out.append("mul a*b" if seen[t] == 1 else "layer-scale mul x2")
        elif t == "add":
            out.append("add +c" if seen[t] == 1 else "residual add x2")
        elif t == "layernorm":
            out.append("layernorm x2")
        elif t == "transpose":
            out.append("permute x4")
        elif t == "fc":
            out.append("fc1" if seen[t] == 1 else "fc2")
        elif t == "gelu":
            out.append("gelu")
        else:
            raise ValueError(f"unexpected op {t!r} in a QuadraBlock")
    return out


ATEN = {"aten::conv2d": "dwconv", "aten::mul": "mul", "aten::add": "add", "aten::layer_norm": "layernorm",
        "aten::permute": "transpose", "aten::linear": "fc", "aten::gelu": "gelu"}


def standin_costs(op: str, channels: int, size: int) -> dict[str, dict[str, float]]:
    """``"<device> <pricing>"`` -> category -> ms (stand-in)."""
    module = make_op(op, channels, channels).eval()
    kernels: list[Kernel] = trace_kernels(module, (1, channels, size, size))
    cats = categorize([k.type for k in kernels])
    out = {}
    for dev, key in STANDINS.items():
        for pricing in ("device", "nnmeter"):
            per = load_standin(key, pricing=pricing).per_kernel_ms(kernels)
            agg = dict.fromkeys(CATEGORIES, 0.0)
            for c, ms in zip(cats, per, strict=True):
                agg[c] += ms
            out[f"{dev} {pricing}"] = agg
    return out


def host_costs(op: str, channels: int, size: int, repeats: int = 50, warmup: int = 10) -> dict[str, float]:
    """Category -> median ms over ``repeats`` forwards on this host (1 thread, torch.profiler CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = make_op(op, channels, channels).eval()
    if hasattr(module.mixer, "impl"):
        module.mixer.impl = "separate"
    x = torch.randn(1, channels, size, size)
    samples: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    with torch.no_grad():
        for _ in range(warmup):
            module(x)
        for _ in range(repeats):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                module(x)
            top = [e for e in prof.events() if e.cpu_parent is None and e.name in ATEN]
            top.sort(key=lambda e: e.time_range.start)
            cats = categorize([ATEN[e.name] for e in top])
            agg = dict.fromkeys(CATEGORIES, 0.0)
            for c, e in zip(cats, top, strict=True):
                agg[c] += e.cpu_time_total / 1e3  # us -> ms
            for c in CATEGORIES:
                samples[c].append(agg[c])
    return {c: statistics.median(v) for c, v in samples.items()}


def run(op: str = "quadra_k7_e4", repeats: int = 50, out: Path = OUT) -> pd.DataFrame:
    rows = []
    for c, s in STAGES:
        columns = standin_costs(op, c, s)
        columns["host measured"] = host_costs(op, c, s, repeats)
        for col, agg in columns.items():
            total = sum(agg.values())
            for cat in CATEGORIES:
                rows.append({"stage": f"{c}x{s}x{s}", "column": col, "op": cat, "ms": agg[cat],
                             "share_pct": 100.0 * agg[cat] / total if total else 0.0})
    df = pd.DataFrame(rows)
    cols = ["vpu device", "vpu nnmeter", "cpu device", "cpu nnmeter", "host measured"]
    lines = [f"# Per-op cost of one {op} per stage (`python -m experiments.diagnostics.quadrablock_ops`)", "",
             "Columns: the vpu / cpu calibrated stand-ins (NOT nn-Meter; `standin/myriadvpu_openvino2019r2`, "
             "`standin/cortexA76cpu_tflite21`) under `pricing=device` (every kernel) and `pricing=nnmeter` "
             "(only what nn-Meter would price: the same per-kernel costs, 0 ms for LN/GELU/Mul/Transpose, on "
             "the vpu also Add, fc priced as one row), and this host measured (torch eager, 1 thread, "
             f"torch.profiler CPU time per aten op, median of {repeats} forwards, batch 1). ms (share of the "
             "block in %). On the host a permute is a view: its copy is paid inside the op that reads it.", ""]
    for stage, g in df.groupby("stage", sort=False):
        lines += [f"## {stage}", ""]
        piv = g.pivot(index="op", columns="column", values="ms").loc[list(CATEGORIES), cols]
        share = g.pivot(index="op", columns="column", values="share_pct").loc[list(CATEGORIES), cols]
        table = pd.DataFrame({"op": list(CATEGORIES)})
        for col in cols:
            table[col] = [f"{piv.at[o, col]:.3f} ({share.at[o, col]:.0f}%)" for o in CATEGORIES]
        table.loc[len(table)] = ["total"] + [f"{piv[col].sum():.3f}" for col in cols]
        lines += [md_table(table), ""]
    report(out, df, lines)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--op", default="quadra_k7_e4")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    run(args.op, args.repeats, args.out)


if __name__ == "__main__":
    main()
