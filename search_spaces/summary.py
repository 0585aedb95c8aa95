"""Parameter and multiply-add counts; ``python -m search_spaces.summary NAME|ARCH.json``.

NAME is a registered model (``quadranet36_t``, or a baseline of the paper's Table I:
``convnext_t``, ``hornet_t``, ``swin_t``) or a search space (``quadra`` prints its smallest and
largest member). MACs are counted with ``torch.utils.flop_counter`` (convs and
matmuls; FLOPs / 2), the convention of the QuadraNet paper's table.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search_spaces.arch import Arch, ArchError, build_net
from search_spaces.baseline_models import BASELINES, PAPER_SIZE, PyramidNet, baseline_model
from search_spaces.quadranet import MODELS, quadranet_arch
from search_spaces.spaces import SPACES, get_space


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward at ``input_shape`` (batch included)."""
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as fc:
            module(torch.zeros(input_shape))
    finally:
        module.train(was_training)
    return fc.get_total_flops() // 2


def deployment(arch: Arch) -> dict:
    """The deployed network of ``arch`` (at its macro's input shape) in numbers: input shape, classes, stem
    stride, params and MACs at batch 1. The one description ``arch.json`` and ``results.json`` both carry."""
    net, macro = build_net(arch), arch.macro
    return {"input_shape": list(macro.input_shape), "num_classes": macro.num_classes, "stem_stride": macro.stem_stride,
            "params": count_params(net), "macs": count_macs(net, (1, *macro.input_shape))}


def _shape_and_classes(item: Arch | PyramidNet) -> tuple[tuple[int, ...], int]:
    if isinstance(item, Arch):
        return item.macro.input_shape, item.macro.num_classes
    return item.input_shape, item.num_classes


def stage_table(item: Arch | PyramidNet) -> pd.DataFrame:
    """Per-part params and MACs (stem, each stage with its transition, head) of an Arch or a built baseline."""
    net = (build_net(item) if isinstance(item, Arch) else item).eval()
    rows, x = [], torch.zeros(1, *_shape_and_classes(item)[0])
    parts = [("stem", net.stem)]
    for i, (t, stage) in enumerate(zip(net.transitions, net.stages)):
        parts.append((f"stage{i}", nn.Sequential(t, *stage)))
    parts.append(("head", net.head))
    for name, mod in parts:
        macs = count_macs(mod, tuple(x.shape))
        with torch.no_grad():
            y = mod(x)
        rows.append({"part": name, "in": "x".join(map(str, x.shape[1:])), "out": "x".join(map(str, y.shape[1:])),
                     "params_M": count_params(mod) / 1e6, "MACs_M": macs / 1e6})
        x = y
    df = pd.DataFrame(rows)
    total = {"part": "total", "in": "", "out": "", "params_M": df.params_M.sum(), "MACs_M": df.MACs_M.sum()}
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def resolve(name: str) -> list[tuple[str, Arch | PyramidNet]]:
    if name in MODELS:
        return [(name, quadranet_arch(name))]
    if name in BASELINES:
        return [(name, baseline_model(name))]
    if name in SPACES:
        space = get_space(name)
        return [(f"{name} smallest", space.smallest_arch()), (f"{name} largest", space.largest_arch())]
    if name.endswith(".json"):
        return [(name, Arch.load(name))]
    raise ValueError(f"unknown model or space {name!r}; valid: {', '.join([*MODELS, *BASELINES, *SPACES])} "
                     "or a .json file")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m search_spaces.summary", description=__doc__.splitlines()[0])
    ap.add_argument("name", help="model name, space name or arch JSON path")
    args = ap.parse_args(argv)
    try:
        items = resolve(args.name)
    except (ValueError, ArchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for title, item in items:
        table = stage_table(item)
        total = table.iloc[-1]
        shape, classes = _shape_and_classes(item)
        paper = f" (its paper: {PAPER_SIZE[title][0]}M, {PAPER_SIZE[title][1]} GMACs)" if title in PAPER_SIZE else ""
        print(f"{title}: {total.params_M:.2f}M params, {total.MACs_M / 1e3:.3f} GMACs at "
              f"{'x'.join(map(str, shape))}, {classes} classes{paper}")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
