"""How wrong are the stand-ins? Leave-one-out on the 18 fitted CNNs, held out on nn-Meter's torch conversions.

    python -m experiments.diagnostics.standin_heldout [--constants A.json --constants B.json ...]
        [--labels before,after]

For each constants file (default: the committed ``latency/data/standin_constants.json``) and each fitted device:

* the leave-one-out error stored in the file (each of the 18 nn-Meter IR reference CNNs predicted by constants
  fitted without it);
* the error on nn-Meter's OTHER reference rows, never fitted: its torch-conversion results
  (``latency/data/nnmeter_reference_latency_torch.csv``, nn-Meter's ``reference_result_onnx_based_torch.txt``:
  torchvision models through its ONNX-based converter; MIT), for the 9 models we can build
  (:data:`latency.reference_nets.TORCH_ROW_NETS`).

All predictions are the calibrated stand-in's (NOT nn-Meter), ``pricing=device``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from experiments.markdown import md_table, report
from latency.kernels import trace_kernels
from latency.reference_nets import TORCH_ROW_NETS
from latency.standin import CONSTANTS_PATH, DATA_DIR, FITTED_DEVICES, REFERENCE_INPUT_SHAPE, load_standin

OUT = Path(__file__).resolve().parents[1] / "results" / "standin_heldout"
TORCH_CSV = DATA_DIR / "nnmeter_reference_latency_torch.csv"


def torch_rows(path: Path = TORCH_CSV) -> pd.DataFrame:
    df = pd.read_csv(path, skipinitialspace=True)
    df.columns = [c.strip() for c in df.columns]
    return df.assign(model_name=df.model_name.str.strip(), predictor=df.predictor.str.strip())


def evaluate(constants: list[Path], labels: list[str], devices=FITTED_DEVICES) -> pd.DataFrame:
    ref = torch_rows()
    kernels = {m: trace_kernels(build(), REFERENCE_INPUT_SHAPE) for m, build in TORCH_ROW_NETS.items()}
    rows = []
    for path, label in zip(constants, labels, strict=True):
        stored = json.loads(path.read_text())["devices"]
        for dev in devices:
            pred = load_standin(dev, path)
            for m, e in stored[dev]["loo_error_pct"].items():
                rows.append({"constants": label, "device": dev, "set": "LOO (18 IR CNNs)", "model": m, "error_pct": e})
            r = ref[ref.predictor == dev].set_index("model_name").latency
            for m, ks in kernels.items():
                if m in r.index:
                    ms = pred.kernels_ms(ks)
                    rows.append({"constants": label, "device": dev, "set": "held out (torch conversions)",
                                 "model": m, "error_pct": 100.0 * (ms - r[m]) / r[m]})
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    g = df.assign(abs_err=df.error_pct.abs()).groupby(["device", "set", "constants"], sort=False)
    out = g.abs_err.agg(mape_pct="mean", max_abs_pct="max", n="count").reset_index()
    out["worst"] = g.apply(lambda x: x.loc[x.error_pct.abs().idxmax(), "model"], include_groups=False).to_numpy()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--constants", type=Path, action="append", help="constants JSON (repeatable)")
    p.add_argument("--labels", default="", help="comma-separated labels of the constants files")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    constants = a.constants or [CONSTANTS_PATH]
    labels = a.labels.split(",") if a.labels else [c.stem for c in constants]
    df = evaluate(constants, labels)
    s = summary(df)
    wide = df.pivot_table(index=["device", "set", "model"], columns="constants", values="error_pct",
                          sort=False).reset_index()
    lines = ["# Stand-in error: leave-one-out and held out (`python -m experiments.diagnostics.standin_heldout`)", "",
             "Calibrated stand-ins (NOT nn-Meter), `pricing=device`, against nn-Meter's own predictions. LOO: the "
             "18 IR reference CNNs, each predicted by constants fitted without it (stored in the constants file). "
             "Held out: nn-Meter's torch-conversion rows (torchvision models, its ONNX-based converter), never "
             "fitted; 9 models we build. Constants: " + ", ".join(f"`{lab}` = `{c}`" for lab, c in
                                                                    zip(labels, constants, strict=True)), "",
             md_table(s, floatfmt="{:.2f}"), "", "Per model (error %):", "", md_table(wide, floatfmt="{:.1f}")]
    report(a.out, df, lines)


if __name__ == "__main__":
    main()
