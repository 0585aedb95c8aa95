"""Training activation memory per image of stacked blocks (QuadraNet paper, Table II setting).

24 layers, batch 64, 64 and 128 channels; bytes saved for backward counted exactly with
saved-tensor hooks (deduplicated by storage, parameters excluded), reported per image and as
a ratio to the ConvNeXt-style block (plain depthwise conv, same block otherwise).

    python -m experiments.block_memory [--hw 14] [--batch 64] [--layers 24]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from torch import nn

from search_spaces.blocks import MBConv, make_op
from search_spaces.memory import saved_activation_bytes

BLOCKS = {
    "QuadraBlock k7 e4": lambda c: make_op("quadra_k7_e4", c, c),
    "QuadraBlock k7 e4 (memory-saving)": lambda c: make_op("quadra_k7_e4", c, c, memory_saving=True),
    "ConvNeXt block k7 e4": lambda c: make_op("convnext_k7_e4", c, c),
    "MBConv k7 e4": lambda c: MBConv(c, c, 7, 4),
    "identity": lambda c: nn.Identity(),
}


def per_image_bytes(make, channels: int, layers: int, batch: int, hw: int) -> float:
    net = nn.Sequential(*(make(channels) for _ in range(layers))).train()
    x = torch.randn(batch, channels, hw, hw, requires_grad=True)
    return saved_activation_bytes(lambda: net(x), net) / batch


def run(channels=(64, 128), layers: int = 24, batch: int = 64, hw: int = 14) -> pd.DataFrame:
    rows = []
    for c in channels:
        mib = {name: per_image_bytes(make, c, layers, batch, hw) / 2**20 for name, make in BLOCKS.items()}
        base = mib["ConvNeXt block k7 e4"]
        rows += [{"channels": c, "block": n, "MiB/image": v, "ratio_to_convnext": v / base} for n, v in mib.items()]
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", type=int, default=14, help="feature map side (14 = stage 3 of a 224 input)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layers", type=int, default=24)
    args = ap.parse_args(argv)
    df = run(layers=args.layers, batch=args.batch, hw=args.hw)
    print(f"Saved activations for backward, {args.layers} layers, batch {args.batch}, {args.hw}x{args.hw} maps")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
