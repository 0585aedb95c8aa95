"""Which quadratic depthwise conv is faster on a CPU? Three depthwise convs (``impl="separate"``) vs one grouped
conv (``impl="grouped"``: groups=C, 3C interleaved outputs, split), same weights.

Shapes follow QuadraNet36-T at 224x224 (C=64/128/256/512 at 56/28/14/7), kernels 3/5/7, batch 1
and 32, 1 and 2 threads, NCHW (the layout the models use). Passes: ``forward`` (inference, no grad)
and ``train`` (forward + backward of a random upstream gradient, weights and input). Every
configuration first checks that both implementations agree, then times them interleaved
(separate, grouped, grouped, separate, ... so that drifting machine load hits both alike) and reports
medians and the ratio grouped/separate (> 1: grouped is slower).

    python -m experiments.diagnostics.quad_conv_speed [--shapes quadranet36_t|proxy] [--threads 1 2] [--batches 1 32]
                                          [--kernels 3 5 7] [--passes forward train] [--train-batches 32]
                                          [--out experiments/results/quad_conv_speed] [--quick]

``--quick`` runs tiny shapes with few repeats (for tests). Results: ``<out>.csv`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from experiments.markdown import md_table
from search_spaces.io import atomic_write_text
from search_spaces.quadratic import QuadDWConv2d

TIMED = ("separate", "grouped")  # the implementations compared (auto picks one of them)
QUADRANET36_T = ((64, 56), (128, 28), (256, 14), (512, 7))  # (channels, map size) per stage at 224
# the maps the product trains at: 28x28 Fashion-MNIST with a stride-2 stem (QuadraNet-xxs and the quadra space)
PROXY = ((16, 14), (32, 14), (64, 7), (128, 4), (256, 2))
SHAPES = {"quadranet36_t": QUADRANET36_T, "proxy": PROXY}
QUICK_SHAPES = ((8, 8), (16, 4))
# median/min above this for either implementation: the repeats were dominated by other load on the machine
# (an OpenMP barrier waiting for a descheduled thread costs tens of ms, once per conv), so the row is not
# used for the verdict
CONTENDED = 2.0
OUT = Path(__file__).resolve().parents[1] / "results" / "quad_conv_speed"


def _step(conv: QuadDWConv2d, x: torch.Tensor, g: torch.Tensor | None) -> None:
    if g is None:
        with torch.no_grad():
            conv(x)
    else:
        conv(x).backward(g)


def check_equal(convs: dict[str, QuadDWConv2d], x: torch.Tensor) -> float:
    """Largest output difference between the implementations, relative to the output's scale."""
    with torch.no_grad():
        ys = [convs[i](x) for i in TIMED]
    return max((y - ys[0]).abs().max().item() for y in ys[1:]) / max(ys[0].abs().max().item(), 1e-30)


def time_config(channels: int, size: int, kernel: int, batch: int, threads: int, pass_: str,
                repeats: int, warmup: int, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ref = QuadDWConv2d(channels, kernel, impl="separate")
    convs = {}
    for impl in TIMED:
        convs[impl] = QuadDWConv2d(channels, kernel, impl=impl)
        convs[impl].load_state_dict(ref.state_dict())
    x = torch.randn(batch, channels, size, size, requires_grad=pass_ == "train")
    rel_diff = check_equal(convs, x)
    if rel_diff > 1e-5:
        raise AssertionError(f"implementations disagree by {rel_diff:.2e} at C={channels} {size}x{size} k{kernel}")
    g = torch.randn(batch, channels, size, size) if pass_ == "train" else None
    times: dict[str, list[float]] = {i: [] for i in TIMED}
    for r in range(warmup + repeats):
        order = TIMED if r % 2 == 0 else TIMED[::-1]
        for impl in order:
            t0 = time.perf_counter()
            _step(convs[impl], x, g)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[impl].append(dt)
    med = {i: statistics.median(v) * 1e3 for i, v in times.items()}
    low = {i: min(v) * 1e3 for i, v in times.items()}
    return {"pass": pass_, "channels": channels, "size": size, "kernel": kernel, "batch": batch,
            "threads": threads, "separate_ms": med["separate"], "grouped_ms": med["grouped"],
            "ratio": med["grouped"] / med["separate"], "separate_min_ms": low["separate"],
            "grouped_min_ms": low["grouped"], "ratio_min": low["grouped"] / low["separate"],
            "repeats": repeats, "max_rel_diff": rel_diff, "load1": os.getloadavg()[0]}


def mark_contended(df: pd.DataFrame) -> pd.DataFrame:
    """``contended``: other load dominated the row's timings. Either the median of an implementation exceeds
    CONTENDED x its fastest repeat, or (more than one thread) its fastest repeat exceeds CONTENDED x the
    fastest repeat of the same configuration on one thread: a second thread never costs that much unless
    it waits for a core that another job holds."""
    df = df.copy()
    spread = pd.concat([df[f"{i}_ms"] / df[f"{i}_min_ms"] for i in TIMED], axis=1).max(axis=1)
    key = ["pass", "channels", "size", "kernel", "batch"]
    one = df[df.threads == 1].set_index(key)[["separate_min_ms", "grouped_min_ms"]]
    slow = pd.Series(False, index=df.index)
    for idx, r in df[df.threads > 1].iterrows():
        k = tuple(r[c] for c in key)
        if k in one.index:
            base = one.loc[k]
            slow[idx] = bool(max(r.separate_min_ms / base.separate_min_ms, r.grouped_min_ms / base.grouped_min_ms)
                             > CONTENDED)
    df["contended"] = (spread > CONTENDED) | slow
    return df


def run(shapes=QUADRANET36_T, kernels=(3, 5, 7), batches=(1, 32), threads=(1, 2),
        passes=("forward", "train"), train_batches=(32,), repeats=None, warmup=None, progress=True) -> pd.DataFrame:
    """Every (pass, shape, kernel, batch, threads); ``train`` only at ``train_batches``."""
    rows = []
    for pass_ in passes:
        for batch in (batches if pass_ == "forward" else train_batches):
            n = repeats or (21 if batch == 1 else 5)
            w = warmup if warmup is not None else (3 if batch == 1 else 1)
            for channels, size in shapes:
                for k in kernels:
                    for t in threads:
                        row = time_config(channels, size, k, batch, t, pass_, n, w)
                        rows.append(row)
                        if progress:
                            print(f"{pass_:7s} C={channels:3d} {size:2d}x{size:<2d} k{k} batch {batch:2d} threads {t}: "
                                  f"separate {row['separate_ms']:8.3f} ms  grouped {row['grouped_ms']:8.3f} ms  "
                                  f"ratio {row['ratio']:.2f} (min {row['ratio_min']:.2f}), load {row['load1']:.1f}",
                                  flush=True)
    return mark_contended(pd.DataFrame(rows))


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Ratio grouped/separate per (pass, batch, threads) over the uncontended rows: min / median / max of
    the median ratios, the median of the min-time ratios, how often grouped won, rows used and contended."""
    rows = []
    for (pass_, batch, threads), g in df.groupby(["pass", "batch", "threads"], sort=False):
        ok = g[~g.contended]
        r = ok.ratio
        rows.append({"pass": pass_, "batch": batch, "threads": threads,
                     "min_ratio": r.min() if len(r) else float("nan"),
                     "median_ratio": r.median() if len(r) else float("nan"),
                     "max_ratio": r.max() if len(r) else float("nan"),
                     "median_ratio_of_mins": ok.ratio_min.median() if len(r) else float("nan"),
                     "grouped_faster": int((r < 1).sum()), "rows": len(r), "contended": int(g.contended.sum())})
    return pd.DataFrame(rows)


def report(df: pd.DataFrame, header: str) -> str:
    body = df[["pass", "channels", "size", "kernel", "batch", "threads", "separate_ms", "grouped_ms", "ratio",
               "separate_min_ms", "grouped_min_ms", "ratio_min", "contended", *(["load1"] if "load1" in df else [])]]
    ok = df[~df.contended]
    won = ok[ok.ratio < 1]
    if ok.empty:
        verdict = "every row was contended: no verdict"
    elif won.empty:
        verdict = (f"grouped was faster in none of the {len(ok)} uncontended configurations: keep `separate` as "
                   "the default everywhere")
    else:
        verdict = f"grouped was faster in {len(won)} of {len(ok)} uncontended configurations: " + "; ".join(
            f"{r.pass_} C={r.channels} {r.size}x{r.size} k{r.kernel} batch {r.batch} threads {r.threads} "
            f"({r.ratio:.2f})" for r in won.rename(columns={"pass": "pass_"}).itertuples())
    return "\n".join([
        header, "",
        "ratio = grouped / separate (medians); ratio_min = the same with each side's fastest repeat; > 1 means "
        f"the grouped conv is slower. Rows are marked contended (other load on the machine dominated) and left out "
        f"of the summary and the verdict when an implementation's median exceeds {CONTENDED:g}x its fastest repeat, "
        f"or, with 2 threads, its fastest repeat exceeds {CONTENDED:g}x the same configuration's on 1 thread.", "",
        "Summary per pass, batch and threads (uncontended rows):", "", md_table(summary(df), "{:.2f}"), "",
        f"Verdict: {verdict}.", "", "All configurations (ms):", "", md_table(body, "{:.3f}"), ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="quadranet36_t",
                    help="quadranet36_t: C=64..512 at 56..7; proxy: the 28x28 training maps (C=16..256 at 14..2)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--train-batches", type=int, nargs="+", default=[32])
    ap.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--passes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 21 at batch 1, 5 above)")
    ap.add_argument("--out", default=str(OUT), help="output path without suffix (.csv and .md are written)")
    ap.add_argument("--from-csv", metavar="CSV", help="measure nothing: report again from saved measurements")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, k3, 1 thread, 2 repeats (for tests)")
    a = ap.parse_args(argv)
    if a.from_csv:
        df = mark_contended(pd.read_csv(a.from_csv))
        text = report(df, "# Quadratic depthwise conv: separate vs grouped (CPU, NCHW)\n\n"
                      f"Report rendered again from the saved measurements in `{Path(a.from_csv).name}` (machine and "
                      "load at measurement time are in the first report of that run; `load1` where recorded). "
                      "Shapes: " + ", ".join(sorted({f"C={r.channels} {r.size}x{r.size}" for r in df.itertuples()},
                                                     key=lambda t: int(t.split()[0][2:]))) + ".")
        out = Path(a.out)
        atomic_write_text(out.with_suffix(".csv"), df.to_csv(index=False, float_format="%.5g"))
        atomic_write_text(out.with_suffix(".md"), text)
        print(text)
        return 0
    if a.quick:  # tiny shapes, k3, 1 thread, batch 1 and 2, 2 repeats
        a.kernels, a.threads, a.batches, a.train_batches = [3], [1], [1, 2], [2]
    shapes, repeats, warmup = (QUICK_SHAPES, 2, 1) if a.quick else (SHAPES[a.shapes], a.repeats, None)
    t0 = time.time()
    df = run(shapes, tuple(a.kernels), tuple(a.batches), tuple(a.threads), tuple(a.passes),
             tuple(a.train_batches), repeats, warmup)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    header = (f"# Quadratic depthwise conv: separate vs grouped (CPU, NCHW{', quick' if a.quick else ''})\n\n"
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}; load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; "
              f"wall {time.time() - t0:.0f} s. Medians of interleaved repeats (21 at batch 1, 5 at batch 32 "
              f"unless --repeats). Shapes: " + ", ".join(f"C={c} {s}x{s}" for c, s in shapes) + ".")
    text = report(df, header)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".csv"), df.to_csv(index=False, float_format="%.5g"))
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
