"""Does a larger receptive field pay? Table IV of the QuadraNet paper: QuadraNet-xxs with depthwise kernel 3, 5,
7 and 9, trained with one recipe; top-1 and training time per epoch, beside the paper's QuadraNet36-T numbers.

Each kernel is a registered QuadraNet (``quadranet36_xxs`` by default) whose every ``quadra_k7_e4`` block
becomes ``quadra_kK_e4``; the architecture is written to ``<root>/k<K>/arch.json`` and trained by the
project's trainer (``nas.trainer.train`` with ``conf/train.yaml`` composed by Hydra, overrides below), so
the recipe is the trainer's: AdamW, warm-up + cosine, clipping, label smoothing, drop path. A kernel whose
``results.json`` exists is skipped (resumable; an interrupted run resumes from its checkpoint).

    python -m experiments.receptive_field [--kernels 3 5 7 9] [--dataset fashion_mnist] [--limit 10000]
                                          [--epochs 1] [--seeds 0 1] [--threads 1]
                                          [--root experiments/runs/receptive_field]
                                          [--out experiments/results/table4_receptive_field] [-- OVERRIDE ...]

Default recipe (affordable on one CPU thread): 1 epoch over 10,000 Fashion-MNIST training images
(a fixed-seed subset), batch 128, lr 2e-3, warm-up 0.1 epoch, seeds 0 and 1 (seed 0 of every kernel first),
tested on all 10,000 test images.
Results: ``<out>.csv`` (per kernel), ``<out>_runs.csv`` (per run) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from experiments.markdown import md_table
from nas.data import get_dataset
from search_spaces.arch import Arch
from search_spaces.io import atomic_write_text
from search_spaces.quadranet import quadranet_arch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RUNS = ROOT / "experiments" / "runs" / "receptive_field"
OUT = ROOT / "experiments" / "results" / "table4_receptive_field"
# QuadraNet paper, Table IV: QuadraNet36-T on ImageNet-1K, 4 A100s
PAPER = {3: (80.6, 81.1), 5: (81.3, 86.9), 7: (82.2, 94.4), 9: (82.2, 123.3)}  # kernel: (top-1 %, training hours)


def kernel_arch(model: str, kernel: int, input_shape, num_classes: int) -> Arch:
    """``model`` at the dataset's shape (stem stride 2 up to 32 px, as nas.train does) with kernel ``kernel``."""
    stem = 2 if max(input_shape[1:]) <= 32 else 4
    base = quadranet_arch(model, input_shape=tuple(input_shape), num_classes=num_classes, stem_stride=stem)
    choices = tuple(c.replace("_k7_", f"_k{kernel}_") for c in base.choices)
    return Arch(f"{model}_k{kernel}", base.macro, choices, {"experiment": "receptive_field", "model": model,
                                                            "kernel": kernel})


def recipe_overrides(a: argparse.Namespace, seed: int) -> list[str]:
    return [f"dataset={a.dataset}", f"dataset.limit={a.limit if a.limit else 'null'}",
            f"train.epochs={a.epochs}", f"train.batch_size={a.batch_size}", f"train.lr={a.lr}",
            f"train.warmup_epochs={a.warmup_epochs}", f"seed={seed}", f"threads={a.threads}",
            "eval.every_epoch=false", "eval.onnx=false", "eval.host_latency=false",
            f"eval.profiles=[{','.join(a.profiles)}]", "results_csv=null", *a.overrides]


def run_kernel(kernel: int, seed: int, a: argparse.Namespace, root: Path) -> dict:
    """Train one kernel and seed in ``root/k<kernel>-seed<seed>`` unless its results exist; returns
    ``results.json``."""
    from nas.report import RESULTS
    from nas.trainer import train

    name = f"k{kernel}-seed{seed}"
    run_dir = root / name
    results = run_dir / RESULTS
    if results.is_file():
        print(f"{name}: {results} exists, skipped", flush=True)
        return json.loads(results.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    arch_path = run_dir / "arch.json"
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("train", overrides=[f"arch={arch_path}", *recipe_overrides(a, seed)])
    d = cfg.dataset
    _, info = get_dataset(d.name, "test", d.root, d.image_size, limit=1)  # the shape the trainer will see
    kernel_arch(a.model, kernel, info.input_shape, info.num_classes).save(arch_path)
    t0 = time.perf_counter()
    train(cfg, run_dir)
    print(f"{name}: trained in {time.perf_counter() - t0:.0f} s -> {run_dir}", flush=True)
    return json.loads(results.read_text())


def per_epoch_s(r: dict) -> float:
    return r["train_time_s"] / max(r["epochs"], 1)


def runs_frame(res: dict[tuple[int, int], dict]) -> pd.DataFrame:
    """One row per (kernel, seed) run."""
    rows = []
    for (k, seed), r in sorted(res.items()):
        row = {"kernel": k, "seed": seed, "top1": r["top1"], "train_s_per_epoch": per_epoch_s(r),
               "params_M": r["params"] / 1e6, "MACs_M": r["macs"] / 1e6, "epochs": r["epochs"]}
        for dev, lat in r.get("latency_ms", {}).items():
            row[f"{dev}_ms_224"] = lat["ms"] if lat.get("ms") is not None else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def table(res: dict[tuple[int, int], dict]) -> pd.DataFrame:
    """Per kernel: top-1 mean and std over seeds, training time per epoch (mean) and its ratio to kernel 7,
    size, predicted latency, and the paper's Table IV beside them."""
    runs = runs_frame(res)
    g = runs.groupby("kernel", sort=True)
    df = pd.DataFrame({"kernel": list(g.groups), "seeds": g.size().to_numpy(),
                       "top1_mean": g.top1.mean().to_numpy(), "top1_std": g.top1.std(ddof=1).to_numpy()})
    df["train_s_per_epoch"] = g.train_s_per_epoch.mean().to_numpy()
    ref = df.set_index("kernel").train_s_per_epoch.get(7)
    df["time_vs_k7"] = df.train_s_per_epoch / ref if ref else float("nan")
    for col in ["params_M", "MACs_M", *[c for c in runs.columns if c.endswith("_ms_224")]]:
        df[col] = g[col].first().to_numpy()
    df["paper_top1"] = [PAPER.get(k, (float("nan"),) * 2)[0] for k in df.kernel]
    df["paper_train_hours"] = [PAPER.get(k, (float("nan"),) * 2)[1] for k in df.kernel]
    df["paper_time_vs_k7"] = df.paper_train_hours / PAPER[7][1]
    return df


def markdown(df: pd.DataFrame, a: argparse.Namespace, res: dict[tuple[int, int], dict], wall_s: float) -> str:
    r0 = next(iter(res.values()))
    arch = Arch.from_dict(r0["arch"])
    hw, stem = arch.macro.input_shape[1], arch.macro.stem_stride
    maps = [hw // stem]  # patchify stem and 2x2 stride-2 transitions, no padding
    for st in arch.macro.stages[1:]:
        maps.append(maps[-1] // st.stride)
    lat_note = ""
    lat = r0.get("latency_ms", {})
    if lat:
        lat_note = ("`<dev>_ms_224`: predicted latency of the network at 1x3x224x224 (stem stride 4, 1000 classes): "
                    + "; ".join(f"{d}: {v.get('predictor')} ({v.get('provenance')})" for d, v in lat.items()) + ". ")
    recipe = (f"{a.model}, kernel K in every QuadraBlock (expansion 4); {a.dataset}, {a.epochs} epoch(s) over "
              f"{a.limit or 'all'} training images (fixed-seed subset), input {r0['input_shape']} with a stride-{stem} "
              f"stem; batch {a.batch_size}, AdamW lr {a.lr}, warm-up {a.warmup_epochs} epoch, cosine, seeds {a.seeds}, "
              f"{a.threads} thread(s); top-1 on {r0['num_test']} test images"
              + (f"; extra overrides {a.overrides}" if a.overrides else ""))
    def fmt(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        for c in frame.columns:
            if c.startswith("top1"):
                frame[c] = frame[c].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
            elif frame[c].dtype.kind == "f":
                frame[c] = frame[c].map(lambda v: "-" if pd.isna(v) else f"{v:.3g}")
        return frame

    return "\n".join([
        "# Table IV: receptive field (quadratic depthwise kernel size)", "",
        f"Recipe: {recipe}.", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end); wall {wall_s:.0f} s for the "
        "runs made in this invocation. Training time is the trainer's own per-epoch wall clock (data loading "
        "included, evaluation excluded).", "",
        md_table(fmt(df)), "",
        "Paper columns: QuadraNet36-T on ImageNet-1K at 224x224, 300 epochs on 4 A100s (Table IV). "
        "time_vs_k7 = training time relative to kernel 7. " + lat_note +
        f"At {hw}x{hw} with a stride-{stem} stem the stage maps are {'/'.join(map(str, maps))} px, so large kernels "
        "mostly see padding in the late stages: the receptive field saturates much earlier than at 224x224 "
        "(56/28/14/7 px). "
        "Short runs: top1_std is the spread over seeds; differences smaller than it are noise.", "",
        "Every run:", "", md_table(fmt(runs_frame(res))), ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7, 9])
    ap.add_argument("--model", default="quadranet36_xxs")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--limit", type=int, default=10000, help="training images (0: all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-epochs", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profiles", nargs="*", default=["cpu", "vpu", "gpu"],
                    help="device profiles for the predicted latency at 224x224 (none: skip)")
    ap.add_argument("--root", default=str(RUNS), help="results root: one run folder per kernel")
    ap.add_argument("--out", default=str(OUT), help="output path without suffix (.csv and .md)")
    ap.add_argument("overrides", nargs="*", help="extra trainer overrides (Hydra syntax), after --")
    a = ap.parse_args(argv)
    for k in a.kernels:
        if k < 1 or k % 2 == 0:
            ap.error(f"kernels must be odd and positive, got {k}")
    root = Path(a.root)
    t0 = time.perf_counter()
    res = {(k, s): run_kernel(k, s, a, root) for s in a.seeds for k in a.kernels}
    df = table(res)
    text = markdown(df, a, res, time.perf_counter() - t0)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".csv"), df.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out.with_name(out.name + "_runs.csv"), runs_frame(res).to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
