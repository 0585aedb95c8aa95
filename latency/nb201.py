"""NAS-Bench-201 networks as nn-Meter's dataset measured them on the devices, as PyTorch modules.

nn-Meter's published dataset holds whole-network latencies MEASURED on a Pixel 4 (Cortex-A76, TFLite 2.1)
and an Intel NCS2 (Myriad VPU, OpenVINO 2019R2) for NAS-Bench-201 networks at 1x3x32x32. Half of those rows
(even ids) ship as package data (``data/nnmeter_measured_nb201_{cpu,vpu}.csv``); the other half is held back
to judge any fit and is never read here. This module builds the measured network from the dataset's
documented facts (our own code, not nn-Meter's generator):

* stem: conv 3x3 (bias) 3 -> C, BatchNorm (no ReLU);
* three stages of N cells at 32x32 / 16x16 / 8x8 with C / 2C / 4C channels, a ResNet basic reduction block
  between stages (main: conv 3x3 s2 + BN + ReLU, conv 3x3 + BN; shortcut: avg-pool 2x2 s2, conv 1x1 with
  bias; the two added);
* a cell: nodes 1..3, node j = sum of its edges from nodes i < j; edge ops ``nor_conv_3x3`` /
  ``nor_conv_1x1`` (ReLU, conv with bias, BN), ``avg_pool_3x3`` (stride 1, SAME), ``skip_connect``
  (identity), ``none`` (x * 0);
* head: BN, ReLU, global mean, dense 4C -> classes without bias.

What ran on the devices is the graph AFTER the converters' constant folding, and that is what
:func:`build_nb201` builds: a ``none`` edge folds away with its add; a node whose every input edge is
``none`` or comes from such a zero node is zero and its outgoing edges vanish; a node that no longer reaches
the cell's output is dropped (with its edges).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

DATA_DIR = Path(__file__).resolve().parent / "data"
MEASURED_DEVICES = {"cpu": "cortexA76cpu_tflite21", "vpu": "myriadvpu_openvino2019r2"}
INPUT_SHAPE = (1, 3, 32, 32)
EDGE_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (src, dst) of the six edges in the order of a NAS-Bench-201 arch string: |1<-0|+|2<-0|2<-1|+|3<-0|3<-1|3<-2|
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


def parse_arch(arch_str: str) -> tuple[str, ...]:
    """The six edge ops of a NAS-Bench-201 cell string, in :data:`EDGES` order."""
    ops: list[str] = []
    for node, part in enumerate(arch_str.strip("|").split("|+|"), start=1):
        edges = [e for e in part.split("|") if e]
        if len(edges) != node:
            raise ValueError(f"node {node} of {arch_str!r} has {len(edges)} edges, expected {node}")
        for src, edge in enumerate(edges):
            op, _, frm = edge.partition("~")
            if op not in EDGE_OPS or frm != str(src):
                raise ValueError(f"bad edge {edge!r} in {arch_str!r}; ops: {', '.join(EDGE_OPS)}")
            ops.append(op)
    if len(ops) != len(EDGES):
        raise ValueError(f"{arch_str!r} is not a 3-node NAS-Bench-201 cell")
    return tuple(ops)


@dataclass(frozen=True)
class FoldedCell:
    """The edges that survive constant folding: ``(src, dst, op)`` with ``op`` not ``none``."""

    edges: tuple[tuple[int, int, str], ...]

    def count(self, op: str) -> int:
        return sum(e[2] == op for e in self.edges)


def fold_cell(ops: tuple[str, ...]) -> FoldedCell:
    """Constant-fold a cell: drop ``none`` edges, zero nodes and nodes that do not reach node 3."""
    zero = {0: False}
    for dst in (1, 2, 3):
        zero[dst] = all(op == "none" or zero[src] for (src, d), op in zip(EDGES, ops, strict=True) if d == dst)
    if zero[3]:
        raise ValueError(f"cell {ops} folds to a constant output")
    live = [(s, d, op) for (s, d), op in zip(EDGES, ops, strict=True) if op != "none" and not zero[s]]
    useful = {3}
    for node in (2, 1):
        if any(s == node and d in useful for s, d, _ in live):
            useful.add(node)
    return FoldedCell(tuple(e for e in live if e[1] in useful and (e[0] == 0 or e[0] in useful)))


def _edge(op: str, c: int) -> nn.Module:
    if op == "skip_connect":
        return nn.Identity()
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    k = 3 if op == "nor_conv_3x3" else 1
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, k, 1, k // 2, bias=True), nn.BatchNorm2d(c))


class Cell(nn.Module):
    """A folded cell: node j is the sum of its surviving edges, the output is node 3."""

    def __init__(self, folded: FoldedCell, c: int):
        super().__init__()
        self.folded = folded
        self.ops = nn.ModuleList(_edge(op, c) for _, _, op in folded.edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes: dict[int, torch.Tensor] = {0: x}
        for dst in (1, 2, 3):
            terms = [m(nodes[s]) for (s, d, _), m in zip(self.folded.edges, self.ops, strict=True) if d == dst]
            if terms:
                out = terms[0]
                for t in terms[1:]:
                    out = out + t
                nodes[dst] = out
        return nodes[3]


class Reduction(nn.Module):
    """ResNet basic block, stride 2: conv3x3 s2-BN-ReLU, conv3x3-BN, plus avg-pool 2x2 -> conv 1x1 (bias)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=True), nn.BatchNorm2d(cout), nn.ReLU(),
                               nn.Conv2d(cout, cout, 3, 1, 1, bias=True), nn.BatchNorm2d(cout))
        self.short = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.short(x)


class Head(nn.Module):
    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.bn, self.act, self.fc = nn.BatchNorm2d(c), nn.ReLU(), nn.Linear(c, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(x)).mean((2, 3)))


def build_nb201(arch_str: str, c: int = 16, n: int = 5, num_classes: int = 10) -> nn.Module:
    """The folded NAS-Bench-201 network of ``arch_str`` as the devices ran it (input :data:`INPUT_SHAPE`)."""
    return build_folded(fold_cell(parse_arch(arch_str)), c, n, num_classes)


def build_folded(folded: FoldedCell, c: int = 16, n: int = 5, num_classes: int = 10) -> nn.Module:
    """The network of an already folded cell (see :func:`build_nb201`)."""
    mods: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=True), nn.BatchNorm2d(c)]
    for stage, width in enumerate((c, 2 * c, 4 * c)):
        if stage:
            mods.append(Reduction(width // 2, width))
        mods += [Cell(folded, width) for _ in range(n)]
    mods.append(Head(4 * c, num_classes))
    return nn.Sequential(*mods).eval()


def op_mix(arch_str: str) -> str:
    """A short label of the folded cell's ops, e.g. ``3x3:2 1x1:1 pool:0 skip:1``."""
    f = fold_cell(parse_arch(arch_str))
    return (f"3x3:{f.count('nor_conv_3x3')} 1x1:{f.count('nor_conv_1x1')} pool:{f.count('avg_pool_3x3')} "
            f"skip:{f.count('skip_connect')}")


def measured_csv(device: str) -> Path:
    """The packaged measured rows for ``device`` (``cpu`` or ``vpu``): even ids only."""
    if device not in MEASURED_DEVICES:
        raise ValueError(f"device={device} has no measured NAS-Bench-201 data; valid: {', '.join(MEASURED_DEVICES)}")
    return DATA_DIR / f"nnmeter_measured_nb201_{device}.csv"


def read_measured(device: str) -> pd.DataFrame:
    """Columns id, arch_str, C, N, num_classes, measured_ms (ms, batch 1, measured on the device)."""
    df = pd.read_csv(measured_csv(device))
    if (df["id"] % 2).any():
        raise ValueError("odd ids are the held-back half of the dataset and must not be used")
    return df
