"""Is QuadraNet36-T as fast as ConvNeXt-T, HorNet-T (7x7) and Swin-T on a CPU? (QuadraNet paper, Table I.)

Latency at batch 1 and throughput at batch 32, with 1 and 2 threads, torch eager
(``inference_mode``, fp32), in each memory format (``--formats``: NCHW and channels-last, where
weights and input are converted with ``memory_format=torch.channels_last``), all measured in one run
and interleaved: every round times each (model, format, batch, threads) once, rounds rotate the model
order, and each number is the median over rounds, so drift in background load hits every model alike.
Where the quadratic depthwise conv offers a grouped implementation (``QuadDWConv2d.impl``),
QuadraNet36-T is measured with each.

Ratios, per format: QuadraNet36-T latency / baseline latency (below 1: QuadraNet is faster) and
QuadraNet36-T throughput / baseline throughput (above 1: faster), beside the paper's A100 throughput
ratio and the MACs ratio (QuadraNet36-T / baseline, counted by ``search_spaces.summary.count_macs``):
the latency ratio two equally efficient implementations would give.

    python -m experiments.throughput [--repeats 5] [--hw 224] [--out experiments/results]
    python -m experiments.throughput --quick     # tiny input, 1 round: a smoke test in seconds
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from search_spaces import quadratic
from search_spaces.baseline_models import baseline_model
from search_spaces.io import atomic_write_text
from search_spaces.quadranet import quadranet
from search_spaces.summary import count_macs

QUADRA = "quadranet36_t"
BASELINES = ("convnext_t", "hornet_t", "swin_t")
# QuadraNet paper, Table I: A100 throughput (img/s) at 224x224
PAPER_THROUGHPUT = {"quadranet36_t": 1971, "convnext_t": 1944, "hornet_t": 1254, "swin_t": 1321}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def quad_impls() -> tuple[str, ...]:
    """Implementations of the quadratic depthwise conv available in this checkout, less ``dense``: its (HW)^2
    matrices are for the small training maps, not 56x56 inference (one 64-channel stage would need ~7 GB)."""
    return tuple(i for i in getattr(quadratic, "IMPLS", ("separate",)) if i != "dense")


set_quad_impl = quadratic.set_impl  # every quadratic depthwise conv of a net to one impl; returns how many


def build_models(hw: int, impls: tuple[str, ...]) -> dict[str, nn.Module]:
    """``quadranet36_t`` (and ``quadranet36_t[<impl>]`` for each other impl) and the baselines, eval mode."""
    shape = (3, hw, hw)
    base = quadranet(QUADRA, input_shape=shape).eval()
    models: dict[str, nn.Module] = {}
    for impl in impls:
        net = base if impl == impls[0] else copy.deepcopy(base)
        if len(impls) > 1:
            set_quad_impl(net, impl)
        models[QUADRA if impl == impls[0] else f"{QUADRA}[{impl}]"] = net
    for name in BASELINES:
        models[name] = baseline_model(name, input_shape=shape).eval()
    return models


def in_formats(models: dict[str, nn.Module], formats: tuple[str, ...]) -> dict[tuple[str, str], nn.Module]:
    """Every model in every memory format (a copy per format after the first), keyed ``(name, format)``."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown memory format(s) {unknown}; valid: {', '.join(FORMATS)}")
    out = {}
    for i, fmt in enumerate(formats):
        for name, net in models.items():
            out[(name, fmt)] = (net if i == 0 else copy.deepcopy(net)).to(memory_format=FORMATS[fmt])
    return out


def _time_call(model: nn.Module, x: torch.Tensor, threads: int, iters: int) -> float:
    """Seconds per forward, mean of ``iters`` back-to-back calls."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for _ in range(iters):
        model(x)
    return (time.perf_counter() - t0) / iters


@torch.inference_mode()
def measure(models: dict[tuple[str, str], nn.Module], hw: int, batches=(1, 32), threads=(1, 2), repeats: int = 5,
            iters_b1: int = 3) -> pd.DataFrame:
    """Interleaved timing of models keyed ``(name, format)`` (see :func:`in_formats`); one row per
    (model, format, batch, threads) with the median over ``repeats`` rounds."""
    old_threads = torch.get_num_threads()
    torch.manual_seed(0)
    inputs = {(b, f): torch.randn(b, 3, hw, hw).contiguous(memory_format=FORMATS[f])
              for b in batches for f in {f for _, f in models}}
    configs = [(b, t) for b in batches for t in threads]
    keys = list(models)
    samples: dict[tuple, list[float]] = {(k, b, t): [] for k in keys for b, t in configs}
    try:
        for b, t in configs:  # warm-up: oneDNN primitives are created per shape and thread count
            for k in keys:
                _time_call(models[k], inputs[(b, k[1])], t, 1)
        for r in range(repeats):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for b, t in configs:
                for k in order:
                    samples[(k, b, t)].append(_time_call(models[k], inputs[(b, k[1])], t, iters_b1 if b == 1 else 1))
    finally:
        torch.set_num_threads(old_threads)
    rows = []
    for ((n, f), b, t), s in samples.items():
        med = statistics.median(s)
        rows.append({"model": n, "format": f, "batch": b, "threads": t, "ms_median": med * 1e3,
                     "ms_min": min(s) * 1e3, "ms_max": max(s) * 1e3, "img_per_s": b / med, "rounds": len(s)})
    return pd.DataFrame(rows)


def ratios(raw: pd.DataFrame, macs: dict[str, int]) -> pd.DataFrame:
    """QuadraNet36-T (each impl) vs each baseline in the same memory format: latency ratio at the smallest
    batch, throughput ratio at the largest, per thread count, with the paper's A100 throughput ratio and
    the MACs ratio (``macs`` per model name)."""
    b_lat, b_thr = raw.batch.min(), raw.batch.max()
    idx = raw.set_index(["model", "format", "batch", "threads"])
    quads = [m for m in raw.model.unique() if m.startswith(QUADRA)]
    rows = []
    for f in raw["format"].unique():
        for q in quads:
            for base in BASELINES:
                for t in sorted(raw.threads.unique()):
                    lat = idx.loc[(q, f, b_lat, t), "ms_median"] / idx.loc[(base, f, b_lat, t), "ms_median"]
                    thr = idx.loc[(q, f, b_thr, t), "img_per_s"] / idx.loc[(base, f, b_thr, t), "img_per_s"]
                    rows.append({"quadranet": q, "baseline": base, "format": f, "threads": t,
                                 f"latency_ratio_b{b_lat}": lat, f"throughput_ratio_b{b_thr}": thr,
                                 "paper_throughput_ratio_A100": PAPER_THROUGHPUT[QUADRA] / PAPER_THROUGHPUT[base],
                                 "macs_ratio": macs[QUADRA] / macs[base]})
    return pd.DataFrame(rows)


def _md_table(df: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return lines


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def to_markdown(raw: pd.DataFrame, rat: pd.DataFrame, meta: dict) -> str:
    lines = ["# Table I: CPU speed, QuadraNet36-T vs ConvNeXt-T, HorNet-T (7x7), Swin-T", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "Latency ratio below 1 and throughput ratio above 1 mean QuadraNet36-T is faster. The paper's",
              "ratio is A100 throughput (Table I: QuadraNet36-T 1971, ConvNeXt-T 1944, HorNet-T 1254, Swin-T 1321",
              "img/s). `macs_ratio` is QuadraNet36-T's multiply-adds over the baseline's: the latency ratio of two",
              "equally efficient implementations.",
              "", "## Ratios", "", *_md_table(rat), "", "## Medians", "", *_md_table(raw), ""]
    return "\n".join(lines)


def run(hw: int = 224, batches=(1, 32), threads=(1, 2), repeats: int = 5, iters_b1: int = 3,
        formats: tuple[str, ...] = tuple(FORMATS)) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    impls = quad_impls()
    models = build_models(hw, impls)
    macs = {name: count_macs(models[name], (1, 3, hw, hw)) for name in (QUADRA, *BASELINES)}
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": _cpu_name(),
            "cores": os.cpu_count(), "torch": torch.__version__,
            "input": f"3x{hw}x{hw}, fp32, eager; memory formats: {', '.join(formats)}",
            "GMACs": ", ".join(f"{n} {m / 1e9:.2f}" for n, m in macs.items()),
            "rounds": repeats, "batch-1 calls per round": iters_b1, "quadratic conv impls": ", ".join(impls),
            "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    # the variants must compute the same function; layer scales 1 so every block counts
    x, live = torch.randn(1, 3, hw, hw), copy.deepcopy(models[QUADRA])
    with torch.no_grad():
        for name, p in live.named_parameters():
            if "gamma" in name:
                p.fill_(1.0)
    with torch.inference_mode():
        ref, diff = live(x), 0.0
        for i in impls[1:]:
            set_quad_impl(live, i)
            diff = max(diff, (live(x) - ref).abs().max().item() / ref.abs().max().item())
        set_quad_impl(live, impls[0])
        for f in formats:
            y = live.to(memory_format=FORMATS[f])(x.contiguous(memory_format=FORMATS[f]))
            diff = max(diff, (y - ref).abs().max().item() / ref.abs().max().item())
    meta["max relative output difference between impls and formats (layer scales 1)"] = f"{diff:.2e}"
    t0 = time.perf_counter()
    raw = measure(in_formats(models, formats), hw, batches, threads, repeats, iters_b1)
    meta["measurement time"] = f"{time.perf_counter() - t0:.0f} s"
    meta["load average at end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    busy = max(float(v) for key in ("load average at start", "load average at end") for v in meta[key].split())
    if busy > (os.cpu_count() or 1):
        meta["warning"] = (f"the host was busy (load average up to {busy:.1f} on {os.cpu_count()} cores): numbers "
                           f"with more threads than idle cores measure contention, not the models")
    return raw, ratios(raw, macs), meta


def cuda_throughput(hw: int = 224, batch: int = 128, repeats: int = 20, warmup: int = 5) -> pd.DataFrame:
    """Table I on a GPU: img/s of each model at ``batch`` under float16 autocast (AMP), channels-last,
    inference; CUDA-event-free wall time around synchronised calls, median of ``repeats``."""
    dev = torch.device("cuda")
    rows = []
    for name, model in build_models(hw, quad_impls()[:1]).items():
        model = model.to(dev, memory_format=torch.channels_last).eval()
        x = torch.randn(batch, 3, hw, hw, device=dev).contiguous(memory_format=torch.channels_last)
        times = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            for i in range(warmup + repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(x)
                torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        rows.append({"model": name, "batch": batch, "img_s": batch / sorted(times)[len(times) // 2],
                     "gpu": torch.cuda.get_device_name(dev)})
    df = pd.DataFrame(rows)
    ref = df.set_index("model").img_s
    df["vs_quadranet36_t"] = df.img_s / ref[QUADRA]
    return df


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda", action="store_true", help="Table I on the GPU instead: batch 128, AMP (fp16 "
                    "autocast), channels-last; writes table1_throughput_cuda.csv/.md into --out")
    ap.add_argument("--hw", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds; each number is their median")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="latency at the first, throughput "
                    "at the last")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS),
                    help="memory formats of weights and input, each measured (default: all)")
    ap.add_argument("--quick", action="store_true", help="32x32 input, batches 1 and 2, one round")
    ap.add_argument("--out", default="experiments/results", help="folder for table1_throughput.* ('' = none)")
    args = ap.parse_args(argv)
    if args.cuda:
        if not torch.cuda.is_available():
            ap.error("--cuda: this machine has no CUDA device")
        df = cuda_throughput(args.hw)
        print(df.to_string(index=False))
        if args.out:
            out = Path(args.out)
            atomic_write_text(out / "table1_throughput_cuda.csv", df.to_csv(index=False))
            atomic_write_text(out / "table1_throughput_cuda.md", "# Table I on CUDA (batch 128, AMP, channels-last)"
                              "\n\n" + df.to_string(index=False) + "\n")
        return
    if args.quick:
        args.hw, args.repeats, args.batches = 32, 1, [1, 2]
    raw, rat, meta = run(args.hw, tuple(args.batches), tuple(args.threads), args.repeats,
                         1 if args.quick else 3, tuple(args.formats))
    for k, v in meta.items():
        print(f"{k}: {v}")
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print(raw.to_string(index=False, float_format=fmt))
    print()
    print(rat.to_string(index=False, float_format=fmt))
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "table1_throughput.csv", raw.to_csv(index=False, float_format="%.4f"))
        atomic_write_text(out / "table1_throughput_ratios.csv", rat.to_csv(index=False, float_format="%.4f"))
        atomic_write_text(out / "table1_throughput.md", to_markdown(raw, rat, meta))
        print(f"wrote {out}/table1_throughput.csv, table1_throughput_ratios.csv, table1_throughput.md")


if __name__ == "__main__":
    main()
