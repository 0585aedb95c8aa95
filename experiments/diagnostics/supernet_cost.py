"""What does a supernet step cost next to training the same network standalone?

One run, side by side, on one fixed architecture of a space at the training proxy
(1x28x28 input, 10 classes, stem stride 2):

* standalone step: ``build_net(arch)``, forward, cross-entropy, backward, SGD step;
* supernet weight step: the supernet with the active paths pinned to ``arch``, same step;
* supernet architecture step in modes ``two``, ``full_v2`` and ``full``, the active path of
  every layer forced to ``arch``'s choice: forward, CE + latency term, ``autograd.grad`` for
  the logits only, Adam step on the logits (and the ``two`` rescale).

Reported per step: median time (after warm-up; steps interleaved round-robin so that machine
noise hits all rows alike) and the bytes autograd saves for backward (exact, from
saved-tensor hooks; parameters excluded), each also as a ratio to the standalone step. Then
the cost per search iteration, (weight step + arch step / N) / standalone step.

    python -m experiments.diagnostics.supernet_cost [--batch 128] [--repeats 10] [--threads 1] [--arch random]
                                        [--seed 0] [--arch-every 1 5] [--out PATH.csv]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from experiments.machine import machine
from nas.steps import arch_step, lut_tensors, weight_step
from search_spaces.arch import Arch, build_net, input_shapes
from search_spaces.io import atomic_write_text
from search_spaces.memory import saved_activation_bytes
from search_spaces.spaces import SearchSpace, get_space
from search_spaces.summary import count_macs
from supernet.loss import BudgetLoss
from supernet.mixed import MixedOp, Sample
from supernet.supernet import Supernet

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
STEM_STRIDE = 2
ROWS = ("standalone step", "supernet weight step", "arch step two", "arch step full_v2", "arch step full")
ARCH_MODES = ("two", "full_v2", "full")
GOAL_BYTES_TWO = 1.05  # arch step `two` saved bytes / standalone (official ProxylessNAS: 1.04x)
GOAL_COST = 1.10  # cost per iteration / standalone step (official ProxylessNAS: 1.0-1.1x; NNI 3.0: 3.1-3.5x)


# -- forcing the active path --------------------------------------------------------------
def force_sample(m: MixedOp, mode: str, index: int, generator: torch.Generator | None = None) -> Sample:
    """An arch-step sample of ``m`` whose active path is ``index``, otherwise drawn as
    :meth:`MixedOp.resample` would: ``two`` pairs ``index`` with one other path drawn from
    ``p`` (without replacement); ``full_v2``/``full`` involve every path. Gates are recomputed
    consistently: one-hot in value, softmax Jacobian of the involved paths in gradient."""
    n = len(m.candidates)
    if n == 1:
        m.sample = Sample(index, (index,), None)
        return m.sample
    if mode == "two":
        p = m.probs().detach().clone()
        p[index] = 0.0
        other = int(torch.multinomial(p, 1, generator=generator))
        pair = [index, other]
        q = F.softmax(m.alpha[pair], dim=0)
        onehot = torch.zeros_like(q)
        onehot[0] = 1.0
        gates = torch.zeros_like(m.alpha).index_put((torch.tensor(pair),), q + (onehot - q).detach())
        m.sample = Sample(index, tuple(pair), gates, mode, m.alpha.detach()[pair].clone())
    else:
        q = m.probs()
        gates = q + (F.one_hot(torch.tensor(index), n).to(q) - q).detach()
        m.sample = Sample(index, tuple(range(n)), gates, mode)
    return m.sample


def force_arch_sample(model: Supernet, mode: str, choices: Sequence[str],
                      generator: torch.Generator | None = None) -> None:
    """``model.resample("arch", mode)`` with every layer's active path set to ``choices``."""
    model.resample("arch", mode, generator)
    for m, name in zip(model.mixed_ops(), choices, strict=True):
        force_sample(m, mode, m.names.index(name), generator)


# -- latency table ------------------------------------------------------------------------
def _synthetic_lut(model: Supernet) -> tuple[list[torch.Tensor], float]:
    """Per candidate: ms proportional to its MACs at its layer's training input (1 ms / 100 MMAC)."""
    model.pin([m.names[0] for m in model.mixed_ops()])
    shapes = input_shapes(model.net, batch=1)
    rows = [torch.tensor([count_macs(c, shapes[m]) / 1e8 for c in m.candidates], dtype=torch.float32)
            for m in model.mixed_ops()]
    return rows, 0.0


def latency_lut(space: SearchSpace, model: Supernet, lut: str = "auto") -> tuple[list[torch.Tensor], float, str]:
    """``(layer_ms, fixed_ms, source)``: the ``vpu`` table when the stand-in predictor exists
    (``lut="auto"``), else (or with ``lut="synthetic"``) MACs-proportional latencies."""
    if lut not in ("auto", "synthetic"):
        raise ValueError(f"unknown lut {lut!r}; valid: auto, synthetic")
    if lut == "auto" and importlib.util.find_spec("latency.standin") is not None:
        try:
            from latency.lut import get_table
            table = get_table(space, "vpu", progress=False)
            return lut_tensors(table.ops(), table.layer_ms(), model), table.fixed_ms, f"vpu table ({table.predictor})"
        except Exception as e:  # a stand-in being written may fail in any way
            rows, fixed = _synthetic_lut(model)
            return rows, fixed, f"synthetic MACs-proportional (vpu table failed: {type(e).__name__}: {e})"
    rows, fixed = _synthetic_lut(model)
    return rows, fixed, "synthetic MACs-proportional"


# -- the benchmark --------------------------------------------------------------------------
def pick_arch(space: SearchSpace, which: str, seed: int) -> Arch:
    if which == "largest":
        return space.largest_arch()
    if which == "smallest":
        return space.smallest_arch()
    if which == "random":
        return space.random_arch(seed)
    raise ValueError(f"unknown arch {which!r}; valid: largest, smallest, random")


def run(batch: int = 128, repeats: int = 10, warmup: int = 2, arch: str | Arch = "random", seed: int = 0,
        space: SearchSpace | None = None, threads: int | None = None, lut: str = "auto") -> pd.DataFrame:
    """The cost table: one row per step kind (see :data:`ROWS`).

    ``space`` is the deployment-side space (default ``quadra``); it is trained here at the
    1x28x28 proxy with stem stride 2. ``df.attrs`` holds the run's settings and machine."""
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(batch, repeats, warmup, arch, seed, space or get_space("quadra"), lut)
    finally:
        torch.set_num_threads(old_threads)


def _run(batch, repeats, warmup, arch, seed, space, lut) -> pd.DataFrame:
    if repeats < 1 or batch < 1:
        raise ValueError("batch and repeats must be >= 1")
    torch.manual_seed(seed)
    train_space = space.with_input(INPUT_SHAPE, NUM_CLASSES, STEM_STRIDE)
    arch_obj = arch if isinstance(arch, Arch) else pick_arch(train_space, arch, seed)
    choices = arch_obj.choices
    x = torch.randn(batch, *INPUT_SHAPE)
    y = torch.randint(0, NUM_CLASSES, (batch,))

    net = build_net(train_space.arch(choices)).train()
    model = Supernet(train_space).train()
    layer_ms, fixed_ms, lut_source = latency_lut(space, model, lut)
    lo = fixed_ms + sum(float(r.min()) for r in layer_ms)
    hi = fixed_ms + sum(float(r.max()) for r in layer_ms)
    loss_fn = BudgetLoss("add_linear", {"device": (lo + hi) / 2 if hi > 0 else 1.0})

    n_opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=4e-5)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=4e-5)
    arch_params = model.arch_parameters()
    a_opt = torch.optim.Adam(arch_params, lr=1e-3, betas=(0.0, 0.999))
    gen = torch.Generator().manual_seed(seed)

    def net_step():
        loss = F.cross_entropy(net(x), y)
        n_opt.zero_grad(set_to_none=True)
        loss.backward()
        n_opt.step()

    def arch_loss():
        ce = F.cross_entropy(model(x), y)
        return loss_fn(ce, {"device": model.expected_latency_ms(layer_ms, fixed_ms)})

    def arch_step_():  # the search's own architecture step
        arch_step(model, a_opt, loss_fn, x, y, {"device": (layer_ms, fixed_ms)})

    # (prepare, step, forward-for-memory) per row; prepare runs untimed before every step
    def pin():
        model.pin(choices)

    steps: dict[str, tuple[Callable[[], None], Callable[[], None], Callable[[], torch.Tensor]]] = {
        ROWS[0]: (lambda: None, net_step, lambda: F.cross_entropy(net(x), y)),
        ROWS[1]: (pin, lambda: weight_step(model, w_opt, x, y), lambda: F.cross_entropy(model(x), y)),
    }
    for row, mode in zip(ROWS[2:], ARCH_MODES):
        steps[row] = (lambda mode=mode: force_arch_sample(model, mode, choices, gen), arch_step_, arch_loss)

    saved = {}
    for row, (prepare, _, fwd) in steps.items():
        prepare()
        saved[row] = saved_activation_bytes(fwd, net if row == ROWS[0] else model)

    times: dict[str, list[float]] = {row: [] for row in steps}
    for i in range(warmup + repeats):  # round-robin: noise hits every row alike
        for row, (prepare, step, _) in steps.items():
            prepare()
            t0 = time.perf_counter()
            step()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[row].append(dt * 1e3)

    t_ref = statistics.median(times[ROWS[0]])
    rows = []
    for row in steps:
        t = statistics.median(times[row])
        rows.append({"step": row, "median_ms": t, "time_ratio": t / t_ref,
                     "saved_MiB": saved[row] / 2**20, "bytes_ratio": saved[row] / saved[ROWS[0]],
                     "saved_bytes": saved[row]})
    df = pd.DataFrame(rows)
    df.attrs.update(batch=batch, repeats=repeats, threads=torch.get_num_threads(), machine=machine(),
                    arch=" ".join(choices), lut=lut_source, torch=torch.__version__)
    return df


def cost_per_iteration(df: pd.DataFrame, every: Sequence[int] = (1, 5),
                       modes: Sequence[str] = ("two", "full_v2")) -> pd.DataFrame:
    """(weight step + arch step / N) / standalone step; also against a standalone net that
    runs as many steps (1 + 1/N), i.e. the per-step overhead."""
    ms = dict(zip(df.step, df.median_ms))
    ref, w = ms[ROWS[0]], ms[ROWS[1]]
    rows = []
    for mode in modes:
        a = ms[f"arch step {mode}"]
        for n in every:
            cost = (w + a / n) / ref
            rows.append({"mode": mode, "arch_every": n, "cost_ratio": cost, "per_step_ratio": cost / (1 + 1 / n)})
    return pd.DataFrame(rows)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(df: pd.DataFrame, cost: pd.DataFrame) -> str:
    a = df.attrs
    lines = [f"Supernet step cost vs standalone: quadra @ {'x'.join(map(str, INPUT_SHAPE))}, stem stride "
             f"{STEM_STRIDE}, batch {a.get('batch')}, median of {a.get('repeats')} steps",
             f"threads {a.get('threads')}, machine: {a.get('machine')}, torch {a.get('torch')}",
             f"arch: {a.get('arch')}", f"latency LUT: {a.get('lut')}", ""]
    show = df.drop(columns="saved_bytes")
    lines.append(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    lines += ["", "Cost per iteration = (weight step + arch step / N) / standalone step"
              " (per_step_ratio: divided by 1 + 1/N, i.e. vs a standalone net running as many steps)",
              cost.to_string(index=False, float_format=lambda v: f"{v:.3f}"), "", "Goals:"]
    two = df.set_index("step").loc["arch step two", "bytes_ratio"]
    lines.append(f"  arch step two saved bytes <= {GOAL_BYTES_TWO:.2f}x standalone (official 1.04x): "
                 f"{two:.3f}x {_verdict(two <= GOAL_BYTES_TWO)}")
    for r in cost.itertuples():
        lines.append(f"  cost per iteration, {r.mode}, arch every {r.arch_every}: <= {GOAL_COST:.2f}x "
                     f"(official 1.0-1.1x, NNI 3.0 3.1-3.5x): {r.cost_ratio:.3f}x {_verdict(r.cost_ratio <= GOAL_COST)}"
                     f"; per step {r.per_step_ratio:.3f}x {_verdict(r.per_step_ratio <= GOAL_COST)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arch", choices=("random", "largest", "smallest"), default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch-every", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--lut", choices=("auto", "synthetic"), default="auto")
    ap.add_argument("--out", default=None, help="write the table as CSV here")
    args = ap.parse_args(argv)
    if any(n < 1 for n in args.arch_every):
        ap.error("--arch-every values must be >= 1")
    df = run(args.batch, args.repeats, args.warmup, args.arch, args.seed, threads=args.threads, lut=args.lut)
    cost = cost_per_iteration(df, args.arch_every)
    print(report(df, cost))
    if args.out:
        atomic_write_text(args.out, df.to_csv(index=False))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
