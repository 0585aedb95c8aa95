"""What would nn-Meter see? Its own ONNX-to-IR conversion and kernel detection on QuadraBlocks and MBConvs.

    python -m experiments.diagnostics.nnmeter_kernels [--out experiments/results/nnmeter_kernels]

Every QuadraBlock candidate of the default space (kernel 3/5/7, expansion 2/4) at each stage's deployment
shape (224 px input: 32x56x56, 64x28x28, 128x14x14, 256x7x7) and every MBConv candidate of the proxyless
space (kernel 3/5/7, expansion 3/6) at its stages' shapes is exported the way the nn-Meter bridge exports it
(:func:`latency.nnmeter.to_onnx_model`: torch 2.13 legacy exporter, opset 20, onnxsim; WITHOUT the
bridge's pricing rewrites, i.e. the graph stock nn-Meter would get), converted by nn-Meter's
``OnnxConverter`` and split into kernels by its ``KernelDetector``
(:func:`latency.nnmeter.session.detect_kernels`). Fusion rules are the reconstruction of
:data:`latency.nnmeter.semantics.ASSUMED_FUSION_RULES` (the predictors' fusion_rules.json ship with the
predictor downloads, absent here); which kernels have a regressor comes from nn-Meter's predictors.yaml.

No latency is computed: nn-Meter's regressors are not on this machine. The table lists what nn-Meter
would price (kernel, regressor, its features) and what it drops (0 ms), per block and predictor, and how
many of the block's MACs the priced kernels' features carry (``features_macs``: nn-Meter's own FLOPs
feature / 2 for conv and fc kernels).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from experiments.markdown import md_table, report
from latency.kernels import total_macs, trace_kernels
from latency.nnmeter.onnx_pricing import FREE_OP_TYPES, to_onnx_model
from latency.nnmeter.semantics import PREDICTOR_KERNELS
from search_spaces.blocks import make_op

OUT = Path(__file__).resolve().parents[1] / "results" / "nnmeter_kernels"
PREDICTORS = ("cortexA76cpu_tflite21", "myriadvpu_openvino2019r2")
QUADRA_STAGES = ((32, 56), (64, 28), (128, 14), (256, 7))  # quadra space at 224 px (stem /4)
PROXYLESS_STAGES = ((24, 56), (40, 28), (80, 14), (96, 14), (192, 7), (320, 7))  # proxyless space, stride-1 layers


def block_view(op: str, channels: int, size: int, predictors: tuple[str, ...] = PREDICTORS
               ) -> dict[str, tuple[list[dict], dict]]:
    """Per predictor, nn-Meter's kernels of one block (op at ``channels`` x ``size`` x ``size``, batch 1,
    exported once) and a summary row: priced kernels, dropped ops (by ONNX type) and MACs (real, and
    carried by nn-Meter's features)."""
    from latency.nnmeter.session import detect_kernels

    torch.manual_seed(0)
    module = make_op(op, channels, channels).eval()
    shape = (1, channels, size, size)
    model = to_onnx_model(module, shape)
    onnx_types = {n.name: n.op_type for n in model.graph.node}
    macs = total_macs(trace_kernels(module, shape))
    out = {}
    for predictor in predictors:
        kernels = detect_kernels(model, PREDICTOR_KERNELS[predictor])
        rows, dropped, priced = [], Counter(), Counter()
        feature_macs = 0.0
        for k in kernels:
            feats = k.get("features")
            if k["priced"] and feats is not None and ("conv" in k["op"] or k["op"].startswith("fc")):
                feature_macs += (feats[5] if "conv" in k["op"] else feats[2]) * 1e6  # FLOPs feature / 2 (M)
            types = "+".join(onnx_types.get(n, "?") for n in k["nodes"])
            rows.append({"block": op, "channels": channels, "size": size, "predictor": predictor,
                         "nnmeter_op": k["op"], "regressor": k["kernel"], "priced": k["priced"],
                         "onnx_ops": types, "features": "" if feats is None else " ".join(f"{v:g}" for v in feats),
                         "nnmeter_input": str(k.get("input_tensors", "")), "nodes": " ".join(k["nodes"])})
            if k["priced"]:
                priced[k["kernel"]] += 1
            elif not all(onnx_types.get(n) in FREE_OP_TYPES for n in k["nodes"]):
                dropped[types] += 1
        out[predictor] = (rows, {
            "block": op, "channels": channels, "size": size, "predictor": predictor,
            "priced": ", ".join(f"{n} x{c}" for n, c in sorted(priced.items())),
            "dropped (0 ms)": ", ".join(f"{n} x{c}" for n, c in sorted(dropped.items())),
            "macs_M": macs / 1e6, "features_macs_M": feature_macs / 1e6,
            "features_share": feature_macs / macs if macs else float("nan")})
    return out


def run(out: Path = OUT) -> pd.DataFrame:
    torch.set_num_threads(1)
    detail, summary = [], []
    blocks = [(f"quadra_k{k}_e{e}", c, s) for c, s in QUADRA_STAGES for k in (3, 5, 7) for e in (2, 4)]
    blocks += [(f"mbconv_k{k}_e{e}", c, s) for c, s in PROXYLESS_STAGES for k in (3, 5, 7) for e in (3, 6)]
    for op, c, s in blocks:
        for rows, row in block_view(op, c, s).values():
            detail += rows
            summary.append(row)
    detail_df, summary_df = pd.DataFrame(detail), pd.DataFrame(summary)
    example = detail_df[(detail_df.block == "quadra_k7_e4") & (detail_df["size"] == 28)]
    mb_example = detail_df[(detail_df.block == "mbconv_k7_e6") & (detail_df["size"] == 28)]
    cols = ["predictor", "nnmeter_op", "regressor", "priced", "onnx_ops", "features", "nnmeter_input"]
    short = summary_df.copy()
    short["predictor"] = short.predictor.str.replace("_tflite21", "").str.replace("_openvino2019r2", "")
    lines = [
        "# What nn-Meter would see (`python -m experiments.diagnostics.nnmeter_kernels`)",
        "",
        "nn-Meter 2.0's own ONNX converter and KernelDetector on each block (torch 2.13 export, opset 20, onnxsim, "
        "no pricing rewrites), fusion rules reconstructed from the predictors' kernel names (the real "
        "fusion_rules.json ship with the predictor downloads, absent here); a kernel is priced when nn-Meter "
        "builds features for it and the predictor has its regressor (nn-Meter's predictors.yaml). "
        "No latency here: nn-Meter's regressors are not on this machine.",
        "",
        "`features_macs_M`: the MACs nn-Meter's priced kernels' FLOPs features carry (conv: 2*H*W*Cout*(k*k*Cin+1)/2; "
        "fc: (2*Cin+1)*Cout/2, **one row**: nn-Meter's fc features have no row count, so a Linear over the H*W "
        "pixels of a map, exported as Reshape-Gemm-Reshape, is priced as a single-vector fc).",
        "",
        "## One QuadraBlock (k7 e4, 64x28x28), kernel by kernel",
        "",
        md_table(example[cols]),
        "",
        "## One MBConv (k7 e6, 40x28x28), kernel by kernel",
        "",
        md_table(mb_example[cols]),
        "",
        "## Every block",
        "",
        md_table(short, floatfmt="{:.3g}"),
    ]
    report(out, detail_df, lines)
    atomic_summary = out.with_name(out.name + "_summary.csv")
    from search_spaces.io import atomic_write_text
    atomic_write_text(atomic_summary, summary_df.to_csv(index=False))
    return summary_df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output stem (.md/.csv/_summary.csv)")
    args = parser.parse_args(argv)
    run(args.out)


if __name__ == "__main__":
    main()
