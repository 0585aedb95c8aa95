"""How fast do the training steps run, today's path against the new default? ``python -m experiments.train_speed``.

Images per second of the two steps every run repeats, on one fixed batch (batch 128, 1x28x28, 10 classes):

* ``retrain step``: ``nas.retrain``'s step on a standalone network (autocast, label-smoothed cross-entropy,
  backward through the loss scaler, clipping at 5, AdamW);
* ``search weight step``: ``nas.search``'s weight step (:func:`nas.steps.weight_step`) on the supernet with its
  paths pinned to the architecture;

for the README's vpu 30 ms export and a 60 ms draw (the vpu table's band [54, 60] ms, seed 0), at stem stride 2
(stage maps 14/7/3/1) and 1 (28/14/7/4), on every available accelerator and precision. ``today`` runs every
quadratic mixer as three depthwise convs (``QuadDWConv2d(impl="separate")``, the old default); ``new`` is the
default ``impl="auto"``, which runs the mixer as one dense batched matmul per channel on small maps
(:func:`search_spaces.quadratic.dense_quad_dw`). The two run side by side in one process, steps interleaved so
that machine noise hits both alike; the ratio is today's median time over the new one. A last row times the
batching of one 60k-image epoch: a ``DataLoader`` over the in-memory tensors (today) against index batches on
the data's device (:class:`nas.data.TensorBatches`, the new default).

    python -m experiments.train_speed [--accelerators cpu,cuda] [--precisions 32,bf16,16] [--strides 2,1]
                                      [--archs vpu30,vpu60] [--repeats 6] [--threads 1] [--out DIR]

Writes ``train_speed.csv`` and ``train_speed.md`` into ``--out`` (default ``experiments/results/``).
Goals (issue "Train where users train"): on the CPU at precision 32, >= 1.5x at stride 2 and >= 2x at stride 1.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.machine import machine
from experiments.markdown import md_table, report
from latency.lut import get_table
from latency.profiles import load_profile
from nas.accelerator import PRECISIONS, Accelerator, resolve
from nas.data import TensorImageDataset, make_loader, to_device
from nas.steps import weight_step
from nas.trainer import param_groups
from search_spaces.arch import build_net
from search_spaces.quadratic import set_impl
from search_spaces.sampling import sample_in_band
from search_spaces.spaces import get_space
from supernet.supernet import Supernet

RESULTS = Path(__file__).resolve().parent / "results"
INPUT, CLASSES, BATCH = (1, 28, 28), 10, 128
# the README's vpu 30 ms export (band_select, search seed 0; blocks at layers 5, 13-15 and 18)
VPU30 = ("identity identity identity identity identity k7_e2 identity identity identity identity identity identity "
         "identity k3_e2 k7_e2 k5_e2 identity identity k3_e2 identity").split()
PATHS = {"today": "separate", "new": "auto"}
STEPS = ("retrain step", "search weight step")
GOALS = {2: 1.5, 1: 2.0}  # CPU, precision 32: new / today img/s at each stem stride
EPOCH_IMAGES = 60_000


def arch_choices(name: str) -> list[str]:
    """``vpu30``: the README's export; ``vpu60``: the first seed-0 draw in [54, 60] ms on the vpu table."""
    if name == "vpu30":
        return [c if c == "identity" else f"quadra_{c}" for c in VPU30]
    if name == "vpu60":
        space = get_space("quadra")
        table = get_table(space, load_profile("vpu"), progress=False)
        (draw,) = sample_in_band(table.ops(), table.layer_ms(), table.fixed_ms, 54.0, 60.0, 1, seed=0)
        return list(draw)
    raise ValueError(f"unknown arch {name!r}; valid: vpu30, vpu60")


def make_step(step: str, choices: list[str], stride: int, accel: Accelerator) -> tuple[torch.nn.Module, Callable]:
    """The model of ``step`` (on ``accel``'s device) and a function that runs one step of it on a fixed batch."""
    torch.manual_seed(0)
    space = get_space("quadra").with_input(INPUT, CLASSES, stride)
    x = accel.tensor(torch.randn(BATCH, *INPUT))
    y = torch.randint(0, CLASSES, (BATCH,)).to(accel.device)
    if step == "retrain step":
        net = accel.module(build_net(space.arch(choices), drop_path_rate=0.05))
        opt = torch.optim.AdamW(param_groups(net, 0.05), lr=2e-3)

        def run() -> None:
            with accel.autocast():
                loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
            accel.backward(loss, opt, net.parameters(), 5.0)
            accel.apply(opt)

        return net, run
    model = accel.module(Supernet(space, 0.0, layer_scale_init=0.1))
    model.pin(choices)
    opt = torch.optim.AdamW(model.weight_parameters(), lr=2e-3, weight_decay=0.05)
    return model, lambda: weight_step(model, opt, x, y, None, 0.1, 5.0, accel)


def _timed(fn: Callable[[], None], accel: Accelerator) -> float:
    if accel.is_cuda:
        torch.cuda.synchronize(accel.device)
    t0 = time.perf_counter()
    fn()
    if accel.is_cuda:
        torch.cuda.synchronize(accel.device)
    return time.perf_counter() - t0


def measure_steps(step: str, arch: str, stride: int, accel: Accelerator, repeats: int, warmup: int) -> dict:
    """Median seconds per step of today's path and the new default, interleaved; one row."""
    choices = arch_choices(arch)
    runs = {}
    for path, impl in PATHS.items():
        model, run = make_step(step, choices, stride, accel)
        set_impl(model, impl)
        runs[path] = run
    times: dict[str, list[float]] = {p: [] for p in runs}
    for i in range(warmup + repeats):
        for path, run in runs.items():
            dt = _timed(run, accel)
            if i >= warmup:
                times[path].append(dt)
    med = {p: statistics.median(t) for p, t in times.items()}
    return {"step": step, "arch": arch, "stride": stride, "accelerator": accel.device.type,
            "precision": accel.precision, "today_img_s": BATCH / med["today"], "new_img_s": BATCH / med["new"],
            "ratio": med["today"] / med["new"], "repeats": repeats}


def measure_batching(accel: Accelerator, repeats: int) -> dict:
    """One epoch of batches of a Fashion-MNIST-sized in-memory set: DataLoader (today) vs index batches."""
    ds = TensorImageDataset(torch.randn(EPOCH_IMAGES, *INPUT), torch.randint(0, CLASSES, (EPOCH_IMAGES,)),
                            tuple(map(str, range(CLASSES))))
    (on_device,) = to_device((ds,), accel.device)

    def today() -> None:
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=0,
                            generator=torch.Generator().manual_seed(0))
        for _ in accel.batches(loader):
            pass

    def new() -> None:
        for _ in accel.batches(make_loader(on_device, BATCH, True, 0, drop_last=True)):
            pass

    t = {"today": [], "new": []}
    for _ in range(repeats):
        t["today"].append(_timed(today, accel))
        t["new"].append(_timed(new, accel))
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"step": "batching (one epoch)", "arch": "-", "stride": "-", "accelerator": accel.device.type,
            "precision": "-", "today_img_s": EPOCH_IMAGES / med["today"], "new_img_s": EPOCH_IMAGES / med["new"],
            "ratio": med["today"] / med["new"], "repeats": repeats}


def run(accelerators=("cpu",), precisions=None, strides=(2, 1), archs=("vpu30", "vpu60"),
        repeats: int = 6, warmup: int = 2, threads: int | None = 1) -> pd.DataFrame:
    """One row per (accelerator, precision, arch, stride, step), then a batching row per accelerator.
    ``precisions`` None: all of :data:`PRECISIONS` on cuda, ``32`` on the cpu."""
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for name in accelerators:
        for precision in precisions or (PRECISIONS if name == "cuda" else ("32",)):
            accel = resolve(name, precision)
            for arch in archs:
                for stride in strides:
                    for step in STEPS:
                        rows.append(measure_steps(step, arch, stride, accel, repeats, warmup))
                        r = rows[-1]
                        print(f"{name} {precision} {arch} stride {stride} {step}: today {r['today_img_s']:.0f} img/s, "
                              f"new {r['new_img_s']:.0f} img/s, {r['ratio']:.2f}x", flush=True)
        rows.append(measure_batching(resolve(name), max(3, repeats // 2)))
    df = pd.DataFrame(rows)
    df.attrs.update(machine=machine(), threads=torch.get_num_threads(), torch=torch.__version__)
    return df


def goal_lines(df: pd.DataFrame) -> list[str]:
    cpu = df[(df.accelerator == "cpu") & (df.precision == "32")]
    lines = []
    for stride, goal in GOALS.items():
        part = cpu[cpu.stride == stride]
        if part.empty:
            continue
        worst = part.ratio.min()
        lines.append(f"- CPU, precision 32, stride {stride}: new / today {worst:.2f}-{part.ratio.max():.2f}x "
                     f"over {len(part)} rows; goal >= {goal}x: {'met' if worst >= goal else 'NOT met'}")
    return lines


def to_markdown(df: pd.DataFrame) -> list[str]:
    a = df.attrs
    return ["# Training step speed: today's path vs the new default", "",
            f"`python -m experiments.train_speed`; {a.get('machine', '?')}, {a.get('threads', '?')} thread(s), torch "
            f"{a.get('torch', '?')}; batch {BATCH}, {'x'.join(map(str, INPUT))} inputs; medians of "
            f"{int(df.repeats.max())} interleaved steps after warm-up. `today`: three depthwise convs per quadratic "
            "mixer (`impl=separate`); `new`: the default `impl=auto` (dense matmul mixer on small maps). ratio = "
            "today's time / new time. Batching: one 60k-image epoch, DataLoader vs index batches on the device.", "",
            md_table(df.drop(columns=["repeats"]), "{:.3g}"), "", *goal_lines(df)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    default_acc = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--accelerators", default=default_acc, help=f"comma list of cpu, cuda (default {default_acc})")
    ap.add_argument("--precisions", default=None,
                    help="comma list of 32, bf16, 16 (default: all three on cuda, 32 on the cpu, where bf16 and 16 ran "
                         "~10x slower than 32 in our runs: no native kernels on the machines we had)")
    ap.add_argument("--strides", default="2,1", help="stem strides at 28 px (default 2,1)")
    ap.add_argument("--archs", default="vpu30,vpu60", help="vpu30 (the README's export), vpu60 (a 60 ms draw)")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for train_speed.csv/.md")
    args = ap.parse_args(argv)
    split = [s for s in args.accelerators.split(",") if s]
    if "cuda" in split and not torch.cuda.is_available():
        ap.error("--accelerators cuda: this machine has no CUDA device")
    precisions = [s for s in (args.precisions or "").split(",") if s] or None
    df = run(split, precisions, [int(s) for s in args.strides.split(",")],
             [s for s in args.archs.split(",") if s], args.repeats, args.warmup, args.threads or None)
    report(args.out / "train_speed", df, to_markdown(df))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
