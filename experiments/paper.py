"""Every QuadraNet paper table in one command: ``python -m experiments.paper [--tables 1,2,3,4]``.

Runs each table's own benchmark with its defaults, in order, and lists what it wrote under
``--out`` (CSV and markdown, plus a plot for Table III). Each table resumes on its own (its run
folders are skipped when their results exist), so an interrupted command is simply run again.

- Table I: ``experiments.throughput`` (QuadraNet36-T vs ConvNeXt-T, HorNet-T, Swin-T on CPU);
- Table II: ``experiments.block_memory`` (bytes saved for backward per block);
- Table III: ``experiments.table3`` (quadra vs proxyless search per device, retrained);
- Table IV: ``experiments.receptive_field`` (QuadraNet-xxs with kernel 3/5/7/9).

``--quick`` gives each table its smoke-test size (small inputs, digits, one epoch): minutes, not
hours, and written to ``--out`` like the real run, so point ``--out`` elsewhere.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from experiments import block_memory, receptive_field, table3, throughput

ROOT = Path(__file__).resolve().parents[1]
TINY_SEARCH = ("train.warmup_epochs=0 train.epochs=1 train.batch_size=32 log_devices=[vpu] dataset.limit=400 "
               "derive.candidates=2 derive.eval_images=64")


def _tables(out: Path, runs: Path, quick: bool) -> dict[str, tuple[str, Callable[[], object]]]:
    """Table number -> (title, a call of its benchmark with the arguments of this mode)."""
    o = str(out)
    if quick:
        t1 = ["--quick", "--threads", "1", "--out", o]
        t2 = ["--channels", "8", "--hw", "7", "--batch", "4", "--layers", "2", "--out", o]
        t3 = ["--dataset", "digits", "--grid", "vpu:30ms", "--retrain-seeds", "0", "--variant", "quick",
              "--search", TINY_SEARCH, "--recipe", "train.epochs=1 train.batch_size=32 dataset.limit=256",
              "--root", str(runs), "--out", o]
        t4 = ["--kernels", "3", "5", "--dataset", "digits", "--limit", "128", "--batch-size", "64", "--model",
              "quadranet25_xxs", "--seeds", "0", "--profiles", "--root", str(runs / "receptive_field"),
              "--out", str(out / "table4_receptive_field"), "--", "dataset.test_limit=64"]
    else:
        t1, t2 = ["--out", o], ["--out", o]
        t3 = ["--root", str(runs), "--out", o]
        t4 = ["--root", str(runs / "receptive_field"), "--out", str(out / "table4_receptive_field")]
    return {"1": ("Table I: throughput vs ConvNeXt, HorNet, Swin", lambda: throughput.main(t1)),
            "2": ("Table II: block training memory", lambda: block_memory.main(t2)),
            "3": ("Table III: search per device, quadra vs proxyless", lambda: table3.main(t3)),
            "4": ("Table IV: receptive field", lambda: receptive_field.main(t4))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", default="1,2,3,4", help="comma-separated table numbers (1-4)")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    p.add_argument("--root", type=Path, default=ROOT / "experiments" / "runs", help="run folders (resumable)")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: every table in minutes")
    a = p.parse_args(argv)
    tables = _tables(a.out, a.root, a.quick)
    wanted = [t.strip() for t in a.tables.split(",") if t.strip()]
    bad = [t for t in wanted if t not in tables]
    if bad or not wanted:
        p.error(f"unknown table(s) {', '.join(bad) or '(none)'}; valid: {', '.join(tables)}")
    a.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for t in wanted:
        title, call = tables[t]
        print(f"\n=== {title} ===", flush=True)
        t0, before = time.time(), {f: f.stat().st_mtime for f in a.out.iterdir()}
        code = call()
        if code not in (None, 0):
            failed.append(title)
        written = sorted(f.name for f in a.out.iterdir() if before.get(f) != f.stat().st_mtime)
        print(f"--- {title}: {time.time() - t0:.0f} s, wrote {', '.join(written) or 'nothing'}", flush=True)
    for title in failed:
        print(f"failed: {title}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
