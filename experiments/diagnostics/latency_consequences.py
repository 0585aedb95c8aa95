"""What the measured-device refit (stand-in cost model 3) changes for QuadraBlocks, before and after, per device.

    python -m experiments.diagnostics.latency_consequences [--out experiments/results/measured_latency]

Three stand-ins (calibrated stand-ins, NOT nn-Meter):

* ``before``: cost model 2, fitted to nn-Meter's 18 reference CNNs only
  (``results/standin_constants_before_issue39.json``);
* ``after``: cost model 3, the committed constants (18 CNNs + 1,007 measured NAS-Bench-201 networks);
* ``after, GELU as add``: cost model 3 with GELU priced as a plain elementwise op instead of an activation (the
  VPU's ``act_bytes`` term): no measured network has a GELU, so this is the spread of that one choice.

For each: a QuadraBlock's per-op cost (``quadra_k7_e4`` at each stage's deployment shape, the categories of
:mod:`experiments.diagnostics.quadrablock_ops`), the most block MACs the default space holds under 30 ms (the dynamic
program of :mod:`experiments.diagnostics.pricing_consequences`; the paper's nn-Meter QuadraNet_VPU: 312M MACs at
29.9 ms), and the table latency of the README default search's two exports (``results/pricing_exports/``), each
under ``pricing=device`` and ``pricing=nnmeter``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pandas as pd

import latency.standin as standin
from experiments.diagnostics import pricing_consequences as pc
from experiments.diagnostics import quadrablock_ops as qo
from experiments.markdown import md_table, report
from search_spaces.arch import Arch

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "measured_latency"
BEFORE = RESULTS / "standin_constants_before_issue39.json"
EXPORTS = {"default search, pricing=device": RESULTS / "pricing_exports" / "vpu-30ms-device.arch.json",
           "default search, pricing=nnmeter": RESULTS / "pricing_exports" / "vpu-30ms-nnmeter.arch.json"}
STAND_INS = ("before", "after", "after, GELU as add")


@contextlib.contextmanager
def stand_in(label: str) -> Iterator[None]:
    """Make the diagnostics price with the ``label`` stand-in (see the module docstring)."""
    path = BEFORE if label == "before" else standin.CONSTANTS_PATH

    def load(key: str, constants_path=None, pricing: str = "device") -> standin.StandinPredictor:
        return standin.load_standin(key, path, pricing)

    acts = frozenset({"relu"}) if label == "after, GELU as add" else standin.ACTIVATION_TYPES
    with mock.patch.object(qo, "load_standin", load), mock.patch.object(pc, "load_standin", load), \
            mock.patch.object(standin, "ACTIVATION_TYPES", acts):
        yield


def block_ops(op: str = "quadra_k7_e4") -> pd.DataFrame:
    rows = []
    for label in STAND_INS:
        with stand_in(label):
            for c, s in qo.STAGES:
                for column, agg in qo.standin_costs(op, c, s).items():
                    dev, pricing = column.split()
                    rows += [{"stand_in": label, "device": dev, "pricing": pricing, "stage": f"{c}x{s}x{s}",
                              "op": cat, "ms": ms} for cat, ms in agg.items()]
    return pd.DataFrame(rows)


def budgets(target_ms: float = 30.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Max block MACs of the default space under ``target_ms``; and the exports' table sums."""
    rows, exports = [], []
    archs = {k: Arch.load(p) for k, p in EXPORTS.items()}
    for label in STAND_INS:
        with stand_in(label):
            for device in ("vpu", "cpu"):
                cands, fixed = pc.candidate_table("quadra", device)
                for pricing in ("device", "nnmeter"):
                    fixed_ms = float(fixed[pricing].sum())
                    macs, picks, ms = pc.max_macs(cands, target_ms - fixed_ms, pricing)
                    rows.append({"stand_in": label, "device": device, "pricing": pricing, "target_ms": target_ms,
                                 "max_block_macs_M": macs / 1e6, "net_macs_M": (macs + fixed.macs.sum()) / 1e6,
                                 "blocks": sum(p not in pc.SKIP_OPS for p in picks), "table_ms": ms + fixed_ms,
                                 "fixed_ms": fixed_ms})
                    table = cands.set_index(["layer", "op"])[pricing]
                    for name, arch in archs.items():
                        layers = sum(float(table[(i, op)]) for i, op in enumerate(arch.choices))
                        exports.append({"stand_in": label, "export": name, "device": device, "pricing": pricing,
                                        "table_ms": layers + fixed_ms})
    return pd.DataFrame(rows), pd.DataFrame(exports)


def run(out: Path = OUT) -> None:
    ops = block_ops()
    caps, exports = budgets()
    totals = ops.groupby(["stand_in", "device", "pricing", "stage"], sort=False)["ms"].sum().unstack("stage")
    piv = ops[ops.pricing == "device"].pivot_table(index=["device", "op"], columns=["stage", "stand_in"],
                                                   values="ms", sort=False)
    stage0 = piv.xs(f"{qo.STAGES[0][0]}x{qo.STAGES[0][1]}x{qo.STAGES[0][1]}", axis=1, level="stage")
    lines = ["# What cost model 3 changes for QuadraBlocks "
             "(`python -m experiments.diagnostics.latency_consequences`)", "",
             "Calibrated stand-ins (NOT nn-Meter). `before`: cost model 2 (18 reference CNNs); `after`: cost model 3 "
             "(18 CNNs + 1,007 networks measured on the devices); `after, GELU as add`: model 3 with GELU priced "
             "as a plain elementwise op rather than as an activation.", "",
             "## One quadra_k7_e4 block, total ms per stage", "",
             md_table(totals.reset_index(), floatfmt="{:.3f}"), "",
             f"## Per op at {qo.STAGES[0][0]}x{qo.STAGES[0][1]}x{qo.STAGES[0][1]} (pricing=device, ms)", "",
             md_table(stage0.reset_index(), floatfmt="{:.3f}"), "",
             "## Most block MACs in the default space under 30 ms (dynamic program; paper's nn-Meter "
             "QuadraNet_VPU: 312M at 29.9 ms)", "", md_table(caps, floatfmt="{:.4g}"), "",
             "## The README default search's exports, table sums (ms)", "",
             md_table(exports.pivot_table(index=["export", "device", "pricing"], columns="stand_in",
                                          values="table_ms", sort=False).reset_index(), floatfmt="{:.2f}"), ""]
    report(out / "quadrablock_consequences", ops, lines)
    caps.to_csv(out / "quadrablock_max_macs.csv", index=False)
    exports.to_csv(out / "quadrablock_exports.csv", index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    run(args.out)


if __name__ == "__main__":
    main()
