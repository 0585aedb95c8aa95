"""How much activation memory does training a stack of blocks keep? (QuadraNet paper, Table II setting.)

24 layers, batch 64, 64 and 128 channels (the paper's configuration; it does not state the
map size, 14x14 is stage 3 of a 224 input). Bytes saved for backward are counted exactly
with saved-tensor hooks (deduplicated by storage, parameters excluded) and reported for the
whole batch, per image, as a ratio to QuadraBlock, and as the "extra" memory of the spatial
interaction: the block minus the SkipBlock, which has no spatial mixer (the paper's framing).

The paper's Table II numbers are not in the text we hold (papers/quadranet_paper.txt has
the table caption's discussion only), so the ``paper`` column quotes what the text claims.

    python -m experiments.block_memory [--hw 14] [--batch 64] [--layers 24] [--out experiments/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from search_spaces.baseline_blocks import ConvNeXtV1Block, HorBlock, SkipBlock, SwinBlock
from search_spaces.blocks import MBConv, make_op
from search_spaces.io import atomic_write_text
from search_spaces.memory import saved_activation_bytes

QUADRA = "QuadraBlock k7 e4"
SKIP = "SkipBlock e4"
CONVBLOCK = "ConvNeXt block k7 e4"  # the convnext_k7_e4 search op; the paper's ConvBlock
# name -> (make(channels, layer index), the paper's name, what the paper says about it)
BLOCKS = {
    QUADRA: (lambda c, i: make_op("quadra_k7_e4", c, c), "QuadraBlock", "reference"),
    "QuadraBlock k7 e4 (memory-saving)": (lambda c, i: make_op("quadra_k7_e4", c, c, memory_saving=True),
                                          "QuadraBlock + QuadraLib", "less than QuadraBlock"),
    "HorBlock gnConv o3 k7 e4": (lambda c, i: HorBlock(c, order=3, kernel=7), "HorBlock",
                                 "more than QuadraBlock (abstract: QuadraNet needs 30% less)"),
    "SwinBlock w7 e4": (lambda c, i: SwinBlock(c, heads=max(c // 32, 1), window=7, shift=i % 2 == 1), "SwinBlock",
                        "more than QuadraBlock (abstract: QuadraNet needs 30% less)"),
    CONVBLOCK: (lambda c, i: make_op("convnext_k7_e4", c, c), "ConvBlock", "low-order baseline, below QuadraBlock"),
    "ConvNeXt (Liu et al. 2022) k7 e4": (lambda c, i: ConvNeXtV1Block(c, 7, 4), "-", "not in Table II"),
    SKIP: (lambda c, i: SkipBlock(c, 4), "SkipBlock", "low-order baseline, the least"),
    "MBConv k7 e4": (lambda c, i: MBConv(c, c, 7, 4), "-", "not in Table II"),
    "identity": (lambda c, i: nn.Identity(), "-", "not in Table II"),
}


def batch_bytes(make, channels: int, layers: int, batch: int, hw: int) -> int:
    """Bytes saved for backward by ``layers`` stacked blocks on a (batch, channels, hw, hw) input."""
    net = nn.Sequential(*(make(channels, i) for i in range(layers))).train()
    x = torch.randn(batch, channels, hw, hw, requires_grad=True)
    return saved_activation_bytes(lambda: net(x), net)


def per_image_bytes(make, channels: int, layers: int, batch: int, hw: int) -> float:
    return batch_bytes(make, channels, layers, batch, hw) / batch


def run(channels=(64, 128), layers: int = 24, batch: int = 64, hw: int = 14) -> pd.DataFrame:
    rows = []
    for c in channels:
        mib = {name: batch_bytes(spec[0], c, layers, batch, hw) / 2**20 for name, spec in BLOCKS.items()}
        quadra, conv, skip = mib[QUADRA], mib[CONVBLOCK], mib[SKIP]
        for name, v in mib.items():
            _, paper_name, claim = BLOCKS[name]
            rows.append({"channels": c, "block": name, "paper_block": paper_name, "MiB": v, "MiB/image": v / batch,
                         "ratio_to_quadra": v / quadra, "ratio_to_convnext": v / conv,
                         "extra_ratio_to_quadra": (v - skip) / (quadra - skip) if v >= skip else float("nan"),
                         "paper": claim})
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame, layers: int, batch: int, hw: int) -> str:
    cols = ["channels", "block", "paper_block", "MiB", "MiB/image", "ratio_to_quadra", "extra_ratio_to_quadra",
            "paper"]
    lines = [f"# Table II: bytes saved for backward, {layers} layers, batch {batch}, {hw}x{hw} maps, fp32",
             "",
             "Counted exactly with saved-tensor hooks (parameters excluded). `extra_ratio_to_quadra` compares",
             "(block - SkipBlock), the memory of the spatial interaction, with QuadraBlock's. The paper's",
             "Table II numbers are not in our copy of the paper; `paper` quotes its text.",
             "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", type=int, default=14, help="feature map side (14 = stage 3 of a 224 input)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--out", default="experiments/results", help="folder for table2_block_memory.csv/.md ('' = none)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    df = run(channels=tuple(args.channels), layers=args.layers, batch=args.batch, hw=args.hw)
    print(f"Saved activations for backward, {args.layers} layers, batch {args.batch}, {args.hw}x{args.hw} maps")
    print(df.drop(columns=["paper"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "table2_block_memory.csv", df.to_csv(index=False, float_format="%.4f"))
        atomic_write_text(out / "table2_block_memory.md", to_markdown(df, args.layers, args.batch, args.hw))
        print(f"wrote {out / 'table2_block_memory.csv'} and .md")


if __name__ == "__main__":
    main()
