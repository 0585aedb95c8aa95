"""How an architecture is chosen from a trained supernet: the registry of ``derive.method`` values.

Every method is a function ``(cfg, setup, st) -> (choices, how, scored)``, registered under its name with
:func:`method`: the exported choices, a sentence saying how they were found (it goes into ``arch.json``) and the
candidates it scored (``[]`` if none). ``nas.search`` exports with :func:`derive_choices` after training;
``nas.derive`` calls it again on a finished search's supernet for other devices and targets. Adding a method is a
function here and its name in :data:`nas.config.DERIVE_METHODS` (a test checks both agree).

The band an export must land in is ``[derive.min_fraction * T, T]`` on the setup's device (:func:`band_ms`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from nas.accelerator import Accelerator
from nas.data import make_loader
from nas.loops import (
    DistInfo,
    cosine_lr,
    epoch_loader,
    evaluate,
    rank_and_world,
    seed_everything,
    shard,
)
from nas.trainer import make_optimizer, train_step
from search_spaces.arch import Arch, build_net
from search_spaces.naswot import naswot_scores
from search_spaces.sampling import EmptyBand, baseline_latencies, sample_in_band
from supernet.derive import InfeasibleTarget, derive
from supernet.supernet import Supernet

if TYPE_CHECKING:
    from latency.lut import LatencyTable
    from nas.search import Setup, State

log = logging.getLogger("nas.search")

DERIVE_STREAM = 1  # derive.method=train: data-order stream of the finalists' training (the search's is 0)
NASWOT_BATCH = 64  # derive.method=naswot: images per code kernel (two batches and inits: tau 0.94-0.99, proxy_tau)

Derived = tuple[list[str], str, list[dict]]  # the choices, how they were derived, the candidates scored
METHODS: dict[str, Callable[[DictConfig, Setup, State], Derived]] = {}


def method(name: str) -> Callable:
    """Register a derivation method under ``name`` (a ``derive.method`` value)."""
    def register(fn: Callable[[DictConfig, Setup, State], Derived]) -> Callable:
        METHODS[name] = fn
        return fn
    return register


def derive_choices(cfg: DictConfig, setup: Setup, st: State) -> Derived:
    """The exported choices of ``derive.method``, how they were derived, and the scored candidates."""
    return METHODS[cfg.derive.method](cfg, setup, st)


def band_ms(cfg: DictConfig, setup: Setup) -> tuple[float, float]:
    """The band an export must land in: ``[derive.min_fraction * T, T]`` on the setup's device."""
    return float(cfg.derive.min_fraction) * setup.target_ms, setup.target_ms


LADDER_QUANTILES = (0.1, 0.9)  # a ladder's targets: evenly spaced quantiles of random draws' latency
LADDER_DRAWS = 4000


def ladder_ms(table: LatencyTable, n: int, seed: int) -> list[float]:
    """``n`` targets (ms, 2 decimals) from the 10th to the 90th percentile of the latency of the random
    baseline's architectures on ``table``'s device (:mod:`search_spaces.sampling`: a skip probability drawn per
    architecture, then each layer skipped with it or given a uniform block), so the ladder spans small to large
    networks; uniform per-layer draws would span only the deep ones (76-98 ms on the vpu, where the main
    command's 30 ms lies far below). The range a front spans, and ``train.sampling=ladder``'s bands."""
    ms = baseline_latencies(table.ops(), table.layer_ms(), table.fixed_ms, LADDER_DRAWS, seed)
    return [round(float(q), 2) for q in np.quantile(ms, np.linspace(*LADDER_QUANTILES, n))]


def draw_in_band(cfg: DictConfig, setup: Setup, model: Supernet, n: int,
                 layer_probs: list[list[float]] | None = None,
                 band: tuple[float, float] | None = None) -> list[tuple[str, ...]]:
    """Up to ``n`` distinct architectures (at least one, else :class:`EmptyBand`) in ``band`` (default
    :func:`band_ms`) on the setup's device and within every other budget, drawn with the random baseline's
    distribution (:mod:`search_spaces.sampling`; ``layer_probs`` mixes in a learned one); deterministic in the
    seed. At most 2M draws: ~1 s for a rare band."""
    lo, hi = band or band_ms(cfg, setup)
    also = [(setup.tables[name].layer_ms(), setup.tables[name].fixed_ms, budget_ms)
            for name, budget_ms in setup.all_budgets().items() if name != setup.device]
    return sample_in_band([m.names for m in model.mixed_ops()], setup.table.layer_ms(), setup.table.fixed_ms, lo,
                          hi, n, seed=cfg.seed, layer_probs=layer_probs, max_draws=2_000_000, at_least=1, also=also)


def band_text(cfg: DictConfig, setup: Setup) -> str:
    """The band in words: ``[27.000, 30.000] ms`` on one budget, each budget and the binding use on several."""
    lo, t = band_ms(cfg, setup)
    if len(setup.all_budgets()) == 1:
        return f"[{lo:.3f}, {t:.3f}] ms"
    budgets = ", ".join(f"{name} <= {ms:.3f} ms" for name, ms in setup.all_budgets().items())
    return f"the joint band ({budgets}; the binding one used >= {cfg.derive.min_fraction:g})"


def budget_use(setup: Setup, choices: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Each budget's table latency over the budget for ``choices``: all <= 1 meets every budget; the largest is
    the binding budget's use (the band asks it to be >= ``derive.min_fraction``)."""
    return {name: setup.tables[name].arch_ms(setup.space.arch(choices)) / budget_ms
            for name, budget_ms in setup.all_budgets().items()}


# -- the methods, in the order of nas.config.DERIVE_METHODS ------------------------------------------
@method("select")
def select(cfg: DictConfig, setup: Setup, st: State) -> Derived:
    """Candidates in the band scored on held-out data with the supernet's weights; the best
    ``derive.finalists`` scored again on the whole held-out split; the best is exported."""
    scored, first, how = _first_round(cfg, setup, st)
    finalists = int(cfg.derive.finalists)
    if finalists > 0 and len(first) < len(setup.val_part):
        # 2,000 images give each score a standard error of ~0.9 pt, more than the spread of the candidates:
        # the best few are scored again on the whole held-out split (successive halving, one round)
        top = sorted(scored, key=lambda r: -r["val_top1"])[:finalists]
        rest = [dict(r, finalist=False) for r in scored if r not in top]
        scored = _score(st.model, [tuple(r["choices"]) for r in top], setup.val_part, setup, "scoring finalists")
        how += f", the best {len(scored)} scored again on {len(setup.val_part)} images"
        scored += rest
    best = max((r for r in scored if r.get("finalist", True)), key=lambda r: (r["val_top1"], r["log_prob"]))
    return best["choices"], f"select: best held-out top-1 of {how}, with supernet weights", scored


@method("train")
def train(cfg: DictConfig, setup: Setup, st: State) -> Derived:
    """The best ``derive.finalists`` of select's first round (by their held-out top-1 with supernet weights),
    each trained standalone from scratch for ``derive.train_epochs`` on the search's training split and scored
    on the whole held-out split; the best is exported. Every finalist starts from the same seed and sees the
    same batches (common random numbers), so their scores differ by architecture, not by draw."""
    scored, _, how = _first_round(cfg, setup, st)
    top = sorted(scored, key=lambda r: -r["val_top1"])[:int(cfg.derive.finalists)]
    rest = [dict(r, finalist=False) for r in scored if r not in top]
    scores = _finalist_scores(cfg, setup, top)
    trained = [dict(r, supernet_top1=r.pop("val_top1"), images=len(setup.val_part), val_top1=score)
               for r, score in zip(top, scores, strict=True)]
    best = max(trained, key=lambda r: (r["val_top1"], r["log_prob"]))
    epochs = float(cfg.derive.train_epochs)
    return best["choices"], (f"train: best held-out top-1 of the {len(trained)} best of {how} (by supernet "
                             f"weights), each trained standalone for {epochs:g} epoch(s) on "
                             f"{len(setup.train_part)} images"), trained + rest


@method("naswot")
def naswot(cfg: DictConfig, setup: Setup, st: State) -> Derived:
    """The candidate of highest NASWOT score (:mod:`search_spaces.naswot`): each standalone network at
    initialisation (seeded), on the first ``NASWOT_BATCH`` images of the held-out split."""
    candidates = _candidates(cfg, setup, st)
    n = min(NASWOT_BATCH, len(setup.val_part))
    images = torch.stack([setup.val_part[i][0] for i in range(n)]).cpu()  # standalone nets, scored on the CPU
    archs = [setup.train_space.arch(c) for c in candidates]
    scores = naswot_scores(tqdm(archs, desc="NASWOT scores", leave=False), images, seed=cfg.seed)
    log_prob = _log_prob_of(st.model)
    scored = [dict(_candidate(c, log_prob, setup), naswot=s, images=n) for c, s in zip(candidates, scores)]
    best = max(scored, key=lambda r: (r["naswot"], r["log_prob"]))
    return best["choices"], (f"naswot: best training-free NASWOT score of {len(scored)} candidates in "
                             f"{band_text(cfg, setup)}, networks at initialisation on {n} images"), scored


@method("budgeted")
def budgeted(cfg: DictConfig, setup: Setup, st: State) -> Derived:
    """The most likely architecture in the band under the learned distribution (exact dynamic programme)."""
    likely = _most_likely(cfg, setup, st)
    how = "argmax" if tuple(likely) == st.model.export().choices else f"most likely in {band_text(cfg, setup)}"
    return likely, how, []


@method("argmax")
def argmax(cfg: DictConfig, setup: Setup, st: State) -> Derived:
    """The paper's: each layer's most likely candidate (may miss the target)."""
    return list(st.model.export().choices), "argmax (paper)", []


# -- what the methods share -------------------------------------------------------------------------
def _log_probs(model: Supernet) -> list[list[float]]:
    return [torch.log_softmax(a.detach(), 0).tolist() for a in model.arch_parameters()]


MULTI_BUDGET_DRAWS = 1024  # budgets on several devices: the most likely of this many draws meeting them all


def _most_likely(cfg: DictConfig, setup: Setup, st: State) -> list[str]:
    """The most likely architecture in :func:`band_ms`: exact on one budget (:func:`supernet.derive.derive`); on
    several, the most likely of :data:`MULTI_BUDGET_DRAWS` drawn in the joint band (learned distribution mixed
    with the random baseline's), or :class:`InfeasibleTarget` when no draw meets every budget."""
    lo, t = band_ms(cfg, setup)
    if len(setup.all_budgets()) == 1:
        picks = derive(_log_probs(st.model), setup.table.layer_ms(), setup.table.fixed_ms, t, min_ms=lo)
        return [m.names[i] for m, i in zip(st.model.mixed_ops(), picks)]
    try:
        drawn = draw_in_band(cfg, setup, st.model, MULTI_BUDGET_DRAWS,
                             layer_probs=[m.probs().tolist() for m in st.model.mixed_ops()])
    except EmptyBand as e:
        budgets = ", ".join(f"{name} {ms:.3f} ms" for name, ms in setup.all_budgets().items())
        raise InfeasibleTarget(f"no architecture of the space meets every budget ({budgets}) and uses "
                               f"{cfg.derive.min_fraction:g} of the binding one: {e}") from None
    return list(max(drawn, key=_log_prob_of(st.model)))


def _candidates(cfg: DictConfig, setup: Setup, st: State) -> list[tuple[str, ...]]:
    """The most likely architecture in the band and ``derive.candidates`` drawn in it (the learned distribution
    mixed with the random baseline's); only the first when the band is empty."""
    likely = tuple(_most_likely(cfg, setup, st))
    try:
        drawn = draw_in_band(cfg, setup, st.model, int(cfg.derive.candidates),
                             layer_probs=[m.probs().tolist() for m in st.model.mixed_ops()])
    except EmptyBand as e:
        log.warning("%s derivation: %s; exporting the most likely architecture in the band", cfg.derive.method, e)
        drawn = []
    return list(dict.fromkeys([likely, *drawn]))


def _first_round(cfg: DictConfig, setup: Setup, st: State) -> tuple[list[dict], torch.utils.data.Dataset, str]:
    """:func:`_candidates` scored with the supernet's weights on the first ``derive.eval_images`` held-out
    images: the scores, those images and a description."""
    candidates = _candidates(cfg, setup, st)
    first = torch.utils.data.Subset(setup.val_part, range(min(int(cfg.derive.eval_images), len(setup.val_part))))
    scored = _score(st.model, candidates, first, setup, "scoring candidates")
    return scored, first, f"{len(scored)} candidates in {band_text(cfg, setup)}"


def _finalist_scores(cfg: DictConfig, setup: Setup, top: list[dict]) -> list[float]:
    """Each finalist's :func:`train_standalone` top-1. Under DDP rank r trains finalists r, r + world, ... alone
    and the scores are gathered, so extra GPUs divide the work; on the CPU :func:`finalist_jobs` processes train
    them side by side. A finalist's result does not depend on which rank or process trained it: the same seed,
    the same batches."""
    rank, world = rank_and_world()
    archs = [setup.train_space.arch(r["choices"]) for r in top]
    jobs = finalist_jobs(cfg, setup, len(top)) if world == 1 else 1
    if jobs > 1:
        return _side_by_side(cfg, setup, archs, jobs)
    mine = {i: train_standalone(cfg, setup, arch, alone=world > 1)
            for i, arch in enumerate(tqdm(archs, desc="training finalists", leave=False)) if i % world == rank}
    if world > 1:
        import torch.distributed as dist
        gathered: list[dict[int, float] | None] = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = {i: score for part in gathered for i, score in part.items()}
    return [mine[i] for i in range(len(top))]


def finalist_jobs(cfg: DictConfig, setup: Setup, finalists: int) -> int:
    """Processes that train the finalists side by side outside torchrun (``derive.jobs``): ``auto`` is one
    1-thread process per core the run may use (``threads``, else every core this process may run on) on the
    CPU, 1 on CUDA; never more than the finalists."""
    jobs = cfg.derive.get("jobs", "auto")
    if jobs == "auto":
        jobs = 1 if setup.accel.is_cuda else int(cfg.threads) if cfg.threads else len(os.sched_getaffinity(0))
    return max(1, min(int(jobs), finalists))


_FORKED: tuple = ()  # (cfg, setup, archs) for the forked finalist processes, set only around the pool


def _train_forked(i: int) -> float:
    torch.set_num_threads(1)
    cfg, setup, archs = _FORKED
    return train_standalone(cfg, setup, archs[i])


def _side_by_side(cfg: DictConfig, setup: Setup, archs: list[Arch], jobs: int) -> list[float]:
    """:func:`train_standalone` of each architecture in ``jobs`` forked 1-thread processes (they inherit the
    data and the tables: nothing is pickled but the index and the score)."""
    global _FORKED
    _FORKED = (cfg, setup, archs)
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(tqdm(pool.map(_train_forked, range(len(archs))), total=len(archs),
                             desc=f"training finalists ({jobs} processes)", leave=False))
    finally:
        _FORKED = ()


def train_standalone(cfg: DictConfig, setup: Setup, arch: Arch, alone: bool = False) -> float:
    """Held-out top-1 of ``arch`` trained from scratch for ``derive.train_epochs`` epochs of the search's
    training split with the retrain's step (:func:`nas.trainer.train_step`: AdamW with the search's lr, weight
    decay, label smoothing and clipping), linear warm-up over the first half of the steps and cosine to 0 over
    the second (the retrain recipe's shape, shortened). A loss that became non-finite scores 0; it is read once,
    at the end. ``alone``: this process trains it by itself under DDP (scored on the whole split, nothing
    all-reduced)."""
    tc, shared = cfg.train, setup.accel
    # its own loss scaler at precision=16: each finalist starts from the initial scale, not the last one's
    accel = Accelerator(shared.device, shared.precision, shared.channels_last)
    seed_everything(cfg.seed)
    net = accel.module(build_net(arch))
    opt = make_optimizer(net, tc)
    per_epoch = len(setup.train_part) // int(tc.batch_size)
    total = max(1, round(float(cfg.derive.train_epochs) * per_epoch))
    step, epoch = 0, 0
    finite = torch.ones((), dtype=torch.bool, device=accel.device)
    net.train()
    while step < total:
        for x, y in accel.batches(epoch_loader(setup.train_part, int(tc.batch_size), cfg.seed, epoch, DistInfo(),
                                               stream=DERIVE_STREAM)):
            loss, _, _ = train_step(net, net, opt, accel, x, y, cosine_lr(tc.lr, step, total, total // 2), tc)
            finite &= torch.isfinite(loss)
            step += 1
            if step == total:
                break
        epoch += 1
    if not finite.item():
        log.warning("derive.method=train: the loss of %s became non-finite; scored as 0", " ".join(arch.choices))
        return 0.0
    if alone:
        return evaluate(net, make_loader(setup.val_part, 256, False, 0), accel, reduce=False)["top1"]
    return evaluate(net, make_loader(shard(setup.val_part), 256, False, 0), accel)["top1"]


def _score(model: Supernet, candidates: list[tuple[str, ...]], images, setup: Setup, desc: str) -> list[dict]:
    """Each candidate pinned in the supernet and evaluated on ``images`` with the inherited weights."""
    loader = make_loader(shard(images), 256, False, 0)  # each rank scores its share
    scored, log_prob = [], _log_prob_of(model)
    for choices in tqdm(candidates, desc=desc, leave=False):
        model.pin(choices)
        scored.append(dict(_candidate(choices, log_prob, setup),
                           val_top1=evaluate(model, loader, setup.accel)["top1"], images=len(images)))
    return scored


def _candidate(choices: tuple[str, ...], log_prob: Callable[[Sequence[str]], float], setup: Setup) -> dict:
    """A candidate's choices, log-probability under the learned distribution and table latency."""
    return {"choices": list(choices), "log_prob": log_prob(choices),
            "ms": setup.table.arch_ms(setup.space.arch(choices))}


def _log_prob_of(model: Supernet) -> Callable[[Sequence[str]], float]:
    """The learned distribution's log-probability of an architecture (its choices), read from ``model`` once."""
    log_probs, names = _log_probs(model), [m.names for m in model.mixed_ops()]
    return lambda choices: sum(lp[n.index(c)] for lp, n, c in zip(log_probs, names, choices))
