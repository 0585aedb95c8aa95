"""Latency-constrained architecture search: ``python -m nas.search device=vpu latency=30ms``.

ProxylessNAS with binary gates on a QuadraBlock supernet. Warm-up epochs train the weights
only; then weight steps on the training split alternate with architecture steps on a
held-out split (one every ``arch.every`` weight steps). The latency term uses the lookup
table of the search device at its *deployment* input shape (e.g. 1x3x224x224), while the
supernet trains at the dataset's resolution (a proxy: 28x28 Fashion-MNIST with a stride-2
stem instead of stride 4).

Recipe knobs that change what is found (``conf/search.yaml``): ``train.sampling``, how weight
steps draw their path:

* ``proxyless``: per layer from the learned distribution (the paper's);
* ``uniform``: per layer uniformly (FairNAS/SPOS-style);
* ``band``: a whole architecture, uniformly from a pool of ``BAND_POOL`` architectures drawn in
  the band ``[derive.min_fraction * T, T]`` on the search device's table with the random
  baseline's distribution (:mod:`search_spaces.sampling`), so the shared weights train the
  networks the derivation compares;

and ``derive.method``:

* ``argmax``: the paper's export, the most likely op per layer (may miss the budget);
* ``budgeted``: the most likely architecture with latency in ``[derive.min_fraction * T, T]``;
* ``select``: ``derive.candidates`` architectures in that band, drawn from the learned
  distribution (mixed with the random-baseline distribution, see
  :mod:`search_spaces.sampling`) plus the ``budgeted`` one, each scored on held-out images
  with the supernet's weights; the best is exported;
* ``train``: the best ``derive.finalists`` of ``select``'s first round, each trained standalone from
  scratch for ``derive.train_epochs`` on the search's training split and scored on the held-out split
  (a selector that measures each finalist's effect instead of trusting the shared weights, which after
  a short search give the ~2-block networks of a tight band almost no lift over the all-identity one;
  ``experiments.diagnostics.proxy_tau``: a retrain's first-epoch accuracy ranks the vpu 15 ms band with
  tau 0.86 across seeds, the supernet's scores with 0.16); the best is exported;
* ``naswot``: the same candidates, each scored without training by NASWOT (Mellor et al.,
  ICML 2021; :mod:`search_spaces.naswot`) as a standalone network at initialisation; the best
  is exported.

The defaults (``band`` + ``train``) led random architectures at equal latency in
``experiments.search_vs_random`` with its short retrain recipe (docs/search-quality.md);
``train.sampling=proxyless derive.method=argmax`` is the paper's. ``derive.jobs`` finalists train side by
side, one 1-thread process each.

Everything lands in the Hydra run folder: ``arch.json``, ``checkpoint.pt`` (resumable: rerun
with the same ``hydra.run.dir``), TensorBoard logs in ``tb/``, ``history.csv``,
``probabilities.png``; one row per search goes to ``results_csv``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from latency.lut import LatencyTable, deployment_space, get_table, measured_whole, whole_note
from latency.profiles import load_profile, profile_from_dict
from latency.units import parse_budgets
from nas import accelerator, tb
from nas.accelerator import Accelerator
from nas.checkpoint import (
    CHECKPOINT,
    check_resume_config,
    device_change,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nas.cli import hydra_run_dir, override_arg, run_cli
from nas.config import check_config
from nas.data import get_dataset, make_loader, to_device, train_val_split
from nas.derivations import band_ms, budget_use, derive_choices, draw_in_band, ladder_ms
from nas.loops import (
    DistInfo,
    TrainingDiverged,
    cosine_lr,
    epoch_loader,
    evaluate,
    init_distributed,
    rank0_builds,
    seed_everything,
    set_lr,
    set_threads,
    shard,
)
from nas.options import show_help_if_asked
from nas.report import append_results_row
from nas.runlock import run_folder
from nas.steps import PathSync, arch_step, export_ms, export_ms_tensor, lut_tensors, weight_step
from search_spaces.arch import Arch, build_net
from search_spaces.blocks import SKIP_OPS
from search_spaces.io import atomic_save_figure, atomic_write_text
from search_spaces.quadratic import set_impl
from search_spaces.sampling import EmptyBand
from search_spaces.spaces import SearchSpace, space_from_config
from search_spaces.summary import count_params, deployment
from supernet.derive import InfeasibleTarget
from supernet.loss import BudgetLoss
from supernet.mixed import SAMPLINGS, prefetch_host
from supernet.supernet import Supernet

log = logging.getLogger("nas.search")

BAND_POOL = 4096  # train.sampling=band/ladder: architectures drawn in the bands (fewer when they hold fewer)
LADDER_BANDS = 6  # train.sampling=ladder: bands of a ladder of targets on the searched device


@dataclass
class Setup:
    """What a search is about: target, spaces, tables and data (nothing that trains)."""

    target_ms: float
    device: str
    space: SearchSpace  # deployment shape, priced by the tables
    train_space: SearchSpace  # the dataset's shape, trained
    tables: dict[str, LatencyTable]
    train_part: object
    val_part: object
    accel: Accelerator  # where the supernet trains (in-memory data already copied there)
    budgets: dict[str, float] = field(default_factory=dict)  # ms by device, the searched one first; {} = its alone

    def all_budgets(self) -> dict[str, float]:
        """Every latency budget an export must meet: the searched device's target and any others."""
        return self.budgets or {self.device: self.target_ms}

    @property
    def table(self) -> LatencyTable:
        return self.tables[self.device]


@dataclass
class State:
    """Everything that trains and is checkpointed."""

    model: Supernet
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    loss_fn: BudgetLoss
    path_gen: torch.Generator
    luts: dict[str, list[torch.Tensor]]
    band_pool: list[tuple[str, ...]] | None = None  # train.sampling=band: weight steps' architectures
    epoch: int = 0  # epochs finished
    step: int = 0
    arch_steps: int = 0
    wall_s: float = 0.0  # over every invocation
    history: list[dict] = field(default_factory=list)

    def lut(self, setup: Setup) -> list[torch.Tensor]:
        return self.luts[setup.device]

    def budget_luts(self, setup: Setup) -> dict[str, tuple[list[torch.Tensor], float]]:
        """Each budget's device: its per-layer tables (on the accelerator) and fixed part."""
        return {name: (self.luts[name], setup.tables[name].fixed_ms) for name in setup.all_budgets()}


def search(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or resume) one search; returns the summary also written into ``arch.json``."""
    check_config(cfg, "search")
    with run_folder(run_dir):  # one writer per run folder
        return _search(cfg, Path(run_dir))


def _search(cfg: DictConfig, run_dir: Path) -> dict:
    t_start = time.perf_counter()
    accel = accelerator.from_config(cfg)
    dist_info = init_distributed(accel)
    set_threads(cfg.threads)
    config = OmegaConf.to_container(cfg, resolve=True)
    if (run_dir / "arch.json").exists():
        return _finished(run_dir, config, dist_info)
    setup = prepare(cfg, dist_info, accel)
    st = build_state(cfg, setup)
    resume(st, run_dir / CHECKPOINT, config, dist_info, accel)
    writer = tb.open_writer(run_dir, st.step) if dist_info.is_main else None
    sync = PathSync(st.model) if dist_info.enabled else None  # DDP that reduces only the path that trained
    total_epochs = cfg.train.warmup_epochs + cfg.train.epochs
    wall_before = st.wall_s
    for epoch in range(st.epoch, total_epochs):
        stats = train_epoch(cfg, setup, st, epoch, dist_info, run_dir, sync, writer)
        st.epoch = epoch + 1
        st.wall_s = wall_before + time.perf_counter() - t_start
        end_epoch(cfg, setup, st, stats, run_dir, writer, dist_info, config)
    if st.arch_steps == 0 and not cfg.derive.without_search:
        raise ValueError(f"the search made no architecture step (train.epochs={cfg.train.epochs}, arch.every="
                         f"{cfg.arch.every}): nothing was searched, so no arch.json is written; raise train.epochs, "
                         "or pass derive.without_search=true to export from the untrained distribution")
    summary = export(cfg, setup, st, run_dir, dist_info, wall_before + time.perf_counter() - t_start)
    if dist_info.is_main:
        finish_checkpoint(run_dir / CHECKPOINT, cfg.keep_checkpoint)
    if writer is not None:
        tb.log_hparams(writer, _hparams(cfg), {"val_top1_supernet": summary["val_top1_supernet"],
                                               "exported_ms": summary["latency_ms"][setup.device]["ms"],
                                               "budget_used": summary["budget_used"]})
        writer.close()
    return summary


# -- the parts ------------------------------------------------------------------------------
def prepare(cfg: DictConfig, dist_info: DistInfo, accel: Accelerator | None = None) -> Setup:
    pricing = str(cfg.get("pricing", "device"))  # a config saved before pricings existed: device
    profile = profile_from_dict({**OmegaConf.to_container(cfg.device, resolve=True), "pricing": pricing})
    budgets = parse_budgets(cfg.latency, profile.name)
    target_ms = budgets[profile.name]
    space = space_from_config(OmegaConf.to_container(cfg.search_space, resolve=True))
    # Latency tables at the deployment shape: search device first, then other budgets' and those for logging.
    devices = list(dict.fromkeys([profile.name, *budgets, *cfg.log_devices]))
    tables = rank0_builds(  # rank 0 builds (and caches) them; the others get its tables
        lambda: {name: get_table(space, profile if name == profile.name else load_profile(name, pricing=pricing))
                 for name in devices},
        lambda built: {name: t.to_json() for name, t in built.items()},
        lambda data: {name: LatencyTable.from_json(text) for name, text in data.items()}, dist_info)
    for name, budget_ms in budgets.items():
        lo, hi = tables[name].range_ms()
        if budget_ms < lo:
            raise InfeasibleTarget(f"latency target {budget_ms:.3f} ms on {name} is below the space's minimum "
                                   f"{lo:.3f} ms ({tables[name].predictor}); the space spans {lo:.3f}-{hi:.3f} ms")
        if budget_ms > hi:
            warnings.warn(f"latency target {budget_ms:.3f} ms is above the space's maximum {hi:.3f} ms on "
                          f"{name}: it will not constrain the search", stacklevel=1)
    d = cfg.dataset
    train_set, info = get_dataset(d.name, "train", d.root, d.image_size, d.limit)
    train_part, val_part = train_val_split(train_set, cfg.train.val_fraction, cfg.seed)
    for name, part in (("training", train_part), ("held-out", val_part)):
        if len(part) < cfg.train.batch_size:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than the {name} split "
                             f"({len(part)} images; train.val_fraction={cfg.train.val_fraction}): not one "
                             f"{'weight' if name == 'training' else 'architecture'} step could run")
    train_space = space.with_input(info.input_shape, info.num_classes, cfg.search_space.train_stem_stride)
    accel = accel or Accelerator(torch.device("cpu"))
    train_part, val_part = to_device((train_part, val_part), accel.device)  # one copy, shared by both splits
    if dist_info.is_main:
        log.info("training the supernet on %s", accel.describe())
    return Setup(target_ms, profile.name, space, train_space, tables, train_part, val_part, accel,
                 budgets if len(budgets) > 1 else {})


def build_state(cfg: DictConfig, setup: Setup) -> State:
    seed_everything(cfg.seed)
    model = Supernet(setup.train_space, cfg.train.drop_path, layer_scale_init=cfg.train.layer_scale_init)
    set_impl(model, cfg.get("quad_impl", "auto"))
    setup.accel.module(model)  # before the optimizers, so that their state lives on the device too
    t = cfg.train
    if t.optimizer == "sgd":  # the ProxylessNAS recipe (MBConv nets)
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=t.lr, momentum=t.momentum, nesterov=True,
                                weight_decay=t.weight_decay)
    elif t.optimizer == "adamw":  # the QuadraNet recipe (LayerNorm/GELU blocks)
        w_opt = torch.optim.AdamW(model.weight_parameters(), lr=t.lr, weight_decay=t.weight_decay)
    else:
        raise ValueError(f"unknown train.optimizer {t.optimizer!r}; valid: adamw, sgd")
    if cfg.arch.optimizer == "adam":  # the paper's
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=cfg.arch.lr, betas=(0.0, 0.999), weight_decay=0.0)
    elif cfg.arch.optimizer == "sgd":
        a_opt = torch.optim.SGD(model.arch_parameters(), lr=cfg.arch.lr)
    else:
        raise ValueError(f"unknown arch.optimizer {cfg.arch.optimizer!r}; valid: adam, sgd")
    lcfg = OmegaConf.to_container(cfg.loss, resolve=True)
    loss_fn = BudgetLoss(lcfg.pop("kind"), setup.all_budgets(), **lcfg).to(setup.accel.device)
    luts = {n: [t.to(setup.accel.device) for t in lut_tensors(tb.ops(), tb.layer_ms(), model)]
            for n, tb in setup.tables.items()}
    pool = band_pool(cfg, setup, model) if cfg.train.sampling in ("band", "ladder") else None
    return State(model, w_opt, a_opt, loss_fn, torch.Generator().manual_seed(cfg.seed), luts, pool)


def band_pool(cfg: DictConfig, setup: Setup, model: Supernet) -> list[tuple[str, ...]] | None:
    """The architectures weight steps draw from (deterministic in the seed): ``train.sampling=band``, those in
    the derivation's band; ``ladder``, an equal share in the band of each of :data:`LADDER_BANDS` targets of a
    ladder (:func:`nas.derivations.ladder_ms`) on the searched device, for a supernet reused at other targets.
    None, with a warning, when the bands hold none (weight steps then draw uniformly per layer)."""
    f = float(cfg.derive.min_fraction)
    bands = ([band_ms(cfg, setup)] if cfg.train.sampling == "band"
             else [(f * t, t) for t in ladder_ms(setup.table, LADDER_BANDS, int(cfg.seed))])
    pool: list[tuple[str, ...]] = []
    for band in bands:
        try:
            pool += draw_in_band(cfg, setup, model, BAND_POOL // len(bands), band=band)
        except EmptyBand as e:
            log.warning("train.sampling=%s: %s", cfg.train.sampling, e)
    if not pool:
        log.warning("train.sampling=%s: no architecture in its bands; weight steps draw uniformly per layer "
                    "instead", cfg.train.sampling)
        return None
    blocks = [sum(c not in SKIP_OPS for c in a) for a in pool]
    log.info("train.sampling=%s: weight steps draw from %d architectures in %s ms on %s (%d-%d blocks)",
             cfg.train.sampling, len(pool), ", ".join(f"[{lo:.3f}, {hi:.3f}]" for lo, hi in bands), setup.device,
             min(blocks), max(blocks))
    return pool


def sample_weight_path(cfg: DictConfig, st: State) -> None:
    """Pin the path of the next weight step (see ``train.sampling``). ``sandwich`` cycles through the largest
    architecture, the smallest and two uniform draws, one per step (BigNAS's sandwich rule, spread over
    consecutive steps rather than accumulated in one)."""
    if st.band_pool is not None:
        st.model.pin_one_of(st.band_pool, st.path_gen)
    elif cfg.train.sampling == "sandwich" and st.step % 4 < 2:
        space = st.model.space
        st.model.pin((space.largest_arch() if st.step % 4 == 0 else space.smallest_arch()).choices)
    else:
        sampling = cfg.train.sampling if cfg.train.sampling in SAMPLINGS else "uniform"
        st.model.resample("weight", cfg.mode, st.path_gen, sampling)


def _with_pricing(saved: dict) -> dict:
    """A config saved before ``pricing`` existed was priced ``device``."""
    return saved if "pricing" in saved else {**saved, "pricing": "device"}


def resume(st: State, path: Path, config: dict, dist_info: DistInfo, accel: Accelerator | None = None) -> None:
    if not path.exists():
        return
    state = load_checkpoint(path, kind="supernet")
    check_resume_config(_with_pricing(state["config"]), config, path)
    st.model.load_state_dict(state["model"])
    if "w_opt" in state:
        st.w_opt.load_state_dict(state["w_opt"])
        st.a_opt.load_state_dict(state["a_opt"])
    elif dist_info.is_main:  # a finished search's supernet (finish_checkpoint): derived again, or trained on
        log.warning("%s holds a finished search's supernet without optimizer states: more epochs start them "
                    "afresh", path)
    st.loss_fn.load_state_dict(state["loss"])
    st.path_gen.set_state(state["path_gen"])
    accel = accel or Accelerator(torch.device("cpu"))
    if state.get("scaler"):
        accel.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    change = device_change(state, accel.device, accel.precision)
    if change and dist_info.is_main:
        log.warning("resuming %s: %s", path, change)
    st.epoch, st.step, st.history = state["epoch"] + 1, state["step"], state["history"]
    st.arch_steps, st.wall_s = state.get("arch_steps", 0), state.get("wall_s", 0.0)
    if dist_info.is_main:
        log.info("resumed from %s after epoch %d (epochs are counted from 1)", path, st.epoch)


def train_epoch(cfg: DictConfig, setup: Setup, st: State, epoch: int, dist_info: DistInfo, run_dir: Path,
                sync: PathSync | None = None, writer=None) -> dict:
    """Weight steps on the training split; after every ``arch.every``-th one, an arch step. ``sync`` averages
    the weight steps' gradients over the processes (DDP, see :class:`nas.steps.PathSync`).

    Nothing here waits for the device at ``precision=32`` but two reads: the logits' host copy once per arch
    step (path sampling, :func:`supernet.mixed.prefetch_host`) and the losses every ``tb.STEP_EVERY`` steps and
    at the end of the epoch (:class:`_StepLog`), which checks them for finiteness and names the first bad step."""
    joint = epoch >= cfg.train.warmup_epochs
    arch_on = joint and not (cfg.arch.skip_first_joint_epoch and epoch == cfg.train.warmup_epochs)
    train_loader, val_loader = (epoch_loader(part, cfg.train.batch_size, cfg.seed, epoch, dist_info, stream)
                                for stream, part in enumerate((setup.train_part, setup.val_part)))
    total_epochs = cfg.train.warmup_epochs + cfg.train.epochs
    total_steps = total_epochs * len(train_loader)
    model, accel = st.model, setup.accel
    model.train()
    bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{total_epochs} {'search' if joint else 'warm-up'}",
               disable=not dist_info.is_main, leave=False)
    steps = _StepLog(cfg, epoch, st, run_dir, writer, bar if dist_info.is_main else None, dist_info.enabled)
    val_iter = accel.batches(val_loader)
    reduce = sync.reduce if sync is not None else None
    for x, y in accel.batches(bar):
        set_lr(st.w_opt, cosine_lr(cfg.train.lr, st.step, total_steps))
        sample_weight_path(cfg, st)
        if sync is not None:
            sync.before_forward()
        loss, logits = weight_step(model, st.w_opt, x, y, None, cfg.train.label_smoothing, cfg.train.grad_clip,
                                   accel, reduce)
        steps.weight(loss, (logits.argmax(1) == y).float().mean())
        st.step += 1
        if arch_on and st.step % cfg.arch.every == 0:
            xv, yv = next(val_iter, (None, None))
            if xv is None:
                val_iter = accel.batches(val_loader)
                xv, yv = next(val_iter)
            if not prefetch_host(model.mixed_ops()):  # the one read of this arch step
                steps.flush()  # raises at the step that made the logits non-finite
                raise TrainingDiverged(_diverged("an architecture logit", "non-finite", cfg, epoch, st, run_dir))
            model.resample("arch", cfg.mode, st.path_gen)
            a_loss, ce = arch_step(model, st.a_opt, st.loss_fn, xv, yv, st.budget_luts(setup), reduce, accel)
            # a finite loss can still leave non-finite logits (gradients through non-finite weights)
            steps.arch(a_loss, ce, torch.stack([a.detach().abs().max() for a in model.arch_parameters()]).max())
            st.loss_fn.update({n: export_ms_tensor(model, *lut) for n, lut in st.budget_luts(setup).items()})
            st.arch_steps += 1
        if st.step % tb.STEP_EVERY == 0:
            steps.flush(model.expected_latency_ms(st.lut(setup), setup.table.fixed_ms).detach())
    steps.flush()
    return steps.stats


class _StepLog:
    """The hot loop's statistics, kept on the device and read in one go by :meth:`flush`, which also stops a
    diverged search with the message an immediate check would give (the step that went non-finite)."""

    def __init__(self, cfg: DictConfig, epoch: int, st: State, run_dir: Path, writer, bar,
                 distributed: bool = False) -> None:
        self.cfg, self.epoch, self.st, self.run_dir, self.writer, self.bar = cfg, epoch, st, run_dir, writer, bar
        self.distributed = distributed
        self.stats = {"loss": [], "acc": [], "arch_loss": [], "arch_ce": [], "joint": epoch >= cfg.train.warmup_epochs}
        self.pending: list[tuple[int, tuple[torch.Tensor, ...]]] = []  # (global step before it, values)

    def weight(self, loss: torch.Tensor, acc: torch.Tensor) -> None:
        self.pending.append((self.st.step, (loss, acc)))

    def arch(self, loss: torch.Tensor, ce: torch.Tensor, logit_max: torch.Tensor) -> None:
        step, (w_loss, acc) = self.pending.pop()
        self.pending.append((step, (w_loss, acc, loss, ce, logit_max)))

    def flush(self, expected_ms: torch.Tensor | None = None) -> None:
        if not self.pending and expected_ms is None:
            return
        values = [v for _, vs in self.pending for v in vs] + ([expected_ms] if expected_ms is not None else [])
        stacked = torch.stack([v.double() for v in values])
        if self.distributed:  # a value non-finite on any rank is NaN on every rank: all stop at the same step
            bad = (~torch.isfinite(stacked)).double()
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            stacked = torch.where((bad > 0) & torch.isfinite(stacked), torch.nan, stacked)
        flat = stacked.cpu().numpy().tolist()  # the one host read
        at = 0
        for step, vs in self.pending:
            row, at = flat[at:at + len(vs)], at + len(vs)
            self._record(step, row)
        self.pending.clear()
        if self.bar is not None and expected_ms is not None:
            self.bar.set_postfix(loss=f"{np.mean(self.stats['loss'][-10:]):.3f}", lat=f"{flat[-1]:.1f}ms")

    def _record(self, step: int, row: list[float]) -> None:
        names = ("supernet loss", None, "architecture loss", None, "largest architecture logit")
        for i, (name, value) in enumerate(zip(names, row)):
            if name is not None and not math.isfinite(value):
                self.st.step = step + (i > 0)  # the arch step's checks ran after the weight step's increment
                raise TrainingDiverged(_diverged(name, value, self.cfg, self.epoch, self.st, self.run_dir))
        self.stats["loss"].append(row[0])
        self.stats["acc"].append(row[1])
        if len(row) > 2:
            self.stats["arch_loss"].append(row[2])
            self.stats["arch_ce"].append(row[3])
        tb.log_step(self.writer, step + 1, train=row[0], arch=row[2] if len(row) > 2 else None)


def _diverged(what: str, value, cfg: DictConfig, epoch: int, st: State, run_dir: Path) -> str:
    ckpt = run_dir / CHECKPOINT
    kept = (f"the last good checkpoint (after epoch {st.epoch}) is kept in {ckpt}" if ckpt.exists()
            else "no checkpoint was written yet")
    return (f"{what} is {value} at epoch {epoch + 1}, global step {st.step} (train.lr={cfg.train.lr}, "
            f"arch.lr={cfg.arch.lr}); {kept} and nothing is exported. Lower the learning rate or use a new "
            "run folder")


def end_epoch(cfg: DictConfig, setup: Setup, st: State, stats: dict, run_dir: Path, writer, dist_info: DistInfo,
              config: dict) -> None:
    """Held-out accuracy of the current argmax path, latencies, logs and the checkpoint."""
    model = st.model
    model.pin(model.export().choices)
    val = evaluate(model, make_loader(shard(setup.val_part), 256, False, 0), setup.accel)
    with torch.no_grad():
        e_lat = {n: model.expected_latency_ms(st.luts[n], t.fixed_ms).item() for n, t in setup.tables.items()}
    row = {"epoch": st.epoch, "phase": "search" if stats["joint"] else "warm-up", "step": st.step,
           "train_loss": float(np.mean(stats["loss"])), "train_acc": float(np.mean(stats["acc"])),
           "val_top1_argmax": val["top1"], "arch_loss": float(np.mean(stats["arch_loss"] or [np.nan])),
           "entropy": model.entropy().item(), "constraint_weight": st.loss_fn.weight.item(),
           "argmax_ms": export_ms(model, st.lut(setup), setup.table.fixed_ms),
           **{f"E[LAT]_{n}_ms": v for n, v in e_lat.items()}}
    st.history.append(row)
    if not dist_info.is_main:
        return
    tb.log_row(writer, row, st.step)
    writer.add_figure("arch/probabilities", _heatmap(model), st.step)
    writer.flush()
    log.info("epoch %d/%d %s: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
             st.epoch, cfg.train.warmup_epochs + cfg.train.epochs, row["phase"])
    save_checkpoint(run_dir / CHECKPOINT, {
        "kind": "supernet", "config": config, "epoch": st.epoch - 1, "step": st.step, "history": st.history,
        "arch_steps": st.arch_steps, "wall_s": st.wall_s, "device": str(setup.accel.device),
        "precision": setup.accel.precision, "model": model.state_dict(), "w_opt": st.w_opt.state_dict(),
        "a_opt": st.a_opt.state_dict(), "loss": st.loss_fn.state_dict(), "scaler": setup.accel.scaler.state_dict(),
        "path_gen": st.path_gen.get_state(), "rng": rng_state()})


# -- export -----------------------------------------------------------------------------------
def export(cfg: DictConfig, setup: Setup, st: State, run_dir: Path, dist_info: DistInfo, wall_s: float,
           provenance: dict | None = None) -> dict:
    """Derive the architecture (``derive.*``), write ``arch.json`` (with ``provenance``'s keys in its metadata),
    the history, the probabilities plot and the results row; return the metadata."""
    model, device, target_ms = st.model, setup.device, setup.target_ms
    t_derive = time.perf_counter()
    choices, how, scored = derive_choices(cfg, setup, st)
    derive_s = time.perf_counter() - t_derive  # minutes with derive.method=train: part of the search's cost
    arch = setup.train_space.arch(choices)
    searched = profile_from_dict(OmegaConf.to_container(cfg.device, resolve=True))  # a user's own included
    dep_arch = deployment_space(setup.space, searched).arch(choices)
    latency = {}
    for n, t in setup.tables.items():
        profile = searched if n == searched.name else load_profile(n)
        dep = deployment_space(setup.space, profile).arch(choices)
        latency[n] = {"ms": t.arch_ms(dep), "predictor": t.predictor, "provenance": t.provenance,
                      "error_note": t.error_note, "method": "sum of per-layer table entries",
                      **measured_whole(t, dep, profile)}
    use = budget_use(setup, choices)  # latency / budget per budget; the binding one is the largest
    used = max(use.values())
    model.pin(choices)
    val_top1 = evaluate(model, make_loader(shard(setup.val_part), 256, False, 0), setup.accel)["top1"]
    meta = {
        "search": {"device": device, "target_ms": target_ms, "loss": cfg.loss.kind, "mode": cfg.mode,
                   "sampling": cfg.train.sampling, "seed": cfg.seed, "dataset": cfg.dataset.name,
                   "epochs": len(st.history), "arch_steps": st.arch_steps, "world_size": dist_info.world_size,
                   "wall_s": round(wall_s + derive_s, 1), "derive_s": round(derive_s, 1)},
        "derivation": how,
        "argmax_choices": list(model.export().choices),
        "latency_ms": latency,
        "meets_target": all(u <= 1 + 1e-9 for u in use.values()),
        "budget_used": round(used, 4),
        "budgets": {name: {"target_ms": ms, "ms": latency[name]["ms"], "used": round(use[name], 4),
                           "predictor": latency[name]["predictor"], "provenance": latency[name]["provenance"]}
                    for name, ms in setup.all_budgets().items()},
        "deployment": deployment(dep_arch),
        "train_params": count_params(build_net(arch)),
        "val_top1_supernet": val_top1,
        "final_val_top1_argmax": st.history[-1]["val_top1_argmax"] if st.history else None,
        "candidates": scored,
        "probabilities": [[round(p, 4) for p in m.probs().tolist()] for m in model.mixed_ops()],
        "config": OmegaConf.to_container(cfg, resolve=True),
        **(provenance or {}),
    }
    arch = arch.with_metadata(**meta)
    if dist_info.enabled:  # every rank must have derived the same architecture
        import torch.distributed as dist
        gathered = [None] * dist_info.world_size
        dist.all_gather_object(gathered, list(choices))
        if any(g != list(choices) for g in gathered):
            raise RuntimeError(f"ranks derived different architectures: {gathered}")
        arch = arch.with_metadata(ranks_agree=True)
    if dist_info.is_main:
        if used < float(cfg.derive.min_fraction) - 1e-9:
            log.warning("the exported architecture uses %.0f%% of the %.3f ms budget (%.3f ms): nothing more likely "
                        "fits the band [%.0f%%, 100%%]", 100 * used, target_ms, latency[device]["ms"],
                        100 * cfg.derive.min_fraction)
        atomic_write_text(run_dir / "history.csv", pd.DataFrame(st.history).to_csv(index=False))
        atomic_save_figure(_heatmap(model, choices), run_dir / "probabilities.png")
        arch.save(run_dir / "arch.json")
        if cfg.results_csv:
            append_results_row(Path(cfg.results_csv), _results_row(arch, run_dir))
        log.info("search summary\n%s", search_summary_text(arch, run_dir, target_ms, device))
    return arch.metadata


def finish_checkpoint(path: Path, keep: bool) -> None:
    """Once ``arch.json`` is written: keep what ``init=supernet`` and a new derivation read (the supernet's
    weights and architecture parameters, its config, history and RNG), drop the optimizer states only more
    training would need; or delete the whole file when ``keep_checkpoint=false``."""
    if not path.exists():
        return
    if not keep:
        path.unlink()
        log.info("keep_checkpoint=false: %s deleted (arch.json holds the result)", path)
        return
    before = path.stat().st_size
    state = load_checkpoint(path, kind="supernet")
    dropped = [state.pop(key) for key in ("w_opt", "a_opt", "scaler") if key in state]
    if not dropped:  # already a finished supernet (derived again): the file, maybe a hard link, stays as it is
        return
    save_checkpoint(path, state)
    log.info("%s keeps the trained supernet: %.1f MB (%.1f MB with the optimizer states)", path,
             path.stat().st_size / 2**20, before / 2**20)


def _hparams(cfg: DictConfig) -> dict:
    """What a sweep varies, for TensorBoard's HPARAMS tab."""
    return {"device": cfg.device.name, "latency": str(cfg.latency), "search_space": cfg.search_space.name,
            "loss": cfg.loss.kind, "mode": cfg.mode, "sampling": cfg.train.sampling, "derive": cfg.derive.method,
            "seed": cfg.seed, "lr": cfg.train.lr, "arch_lr": cfg.arch.lr, "arch_every": cfg.arch.every,
            "warmup_epochs": cfg.train.warmup_epochs, "epochs": cfg.train.epochs}


def _finished(run_dir: Path, config: dict, dist_info: DistInfo) -> dict:
    """A rerun of a finished search: check it is the same search, print its summary, rewrite nothing."""
    arch = Arch.load(run_dir / "arch.json")
    if (run_dir / CHECKPOINT).exists():
        check_resume_config(_with_pricing(load_checkpoint(run_dir / CHECKPOINT, kind="supernet")["config"]), config,
                            run_dir / CHECKPOINT)
    else:  # keep_checkpoint=false deleted it: the export records the config
        check_resume_config(_with_pricing(arch.metadata["config"]), config, run_dir / "arch.json")
    if dist_info.is_main and config.get("results_csv"):  # a run killed before its row was added gets it now
        append_results_row(Path(config["results_csv"]), _results_row(arch, run_dir), replace_existing=False)
    if dist_info.is_main:
        log.info("%s already holds a finished search; nothing rewritten\n%s", run_dir,
                 search_summary_text(arch, run_dir, arch.metadata["search"]["target_ms"],
                                     arch.metadata["search"]["device"]))
    return arch.metadata


def _results_row(arch: Arch, run_dir: Path) -> dict:
    m = arch.metadata
    row = {"run_dir": str(Path(run_dir).resolve()), "device": m["search"]["device"],
           "target_ms": m["search"]["target_ms"]}
    for name, lat in m["latency_ms"].items():
        row[f"{name}_ms"] = lat["ms"]
    row.update(budget_used=m["budget_used"], derivation=m["derivation"], sampling=m["search"]["sampling"],
               loss=m["search"]["loss"], mode=m["search"]["mode"], val_top1_supernet=m["val_top1_supernet"],
               deploy_params=m["deployment"]["params"], deploy_macs=m["deployment"]["macs"],
               seed=m["search"]["seed"], dataset=m["search"]["dataset"], wall_s=m["search"]["wall_s"],
               choices=" ".join(c.replace("quadra_", "") for c in arch.choices))
    return row


def _heatmap(model: Supernet, exported: list[str] | None = None):
    """Per layer, each candidate's probability; the exported architecture's choice framed in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted({n for m in model.mixed_ops() for n in m.names}, key=lambda n: (n == "identity", n))
    grid = np.full((len(model.mixed_ops()), len(names)), np.nan)
    for i, m in enumerate(model.mixed_ops()):
        for n, p in zip(m.names, m.probs().detach().tolist()):
            grid[i, names.index(n)] = p
    fig, ax = plt.subplots(figsize=(1 + 0.9 * len(names), 0.8 + 0.3 * len(grid)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(grid)))
    ax.set_ylabel("searchable layer")
    for i, choice in enumerate(exported or ()):
        ax.add_patch(plt.Rectangle((names.index(choice) - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_title("architecture probabilities" + (" (exported: red)" if exported else ""))
    fig.colorbar(im, ax=ax, label="probability")
    fig.tight_layout()
    return fig


def search_summary_text(arch: Arch, run_dir: Path, target_ms: float, device: str) -> str:
    m = arch.metadata
    budgets = m.get("budgets") or {device: {"target_ms": target_ms, "used": m["budget_used"]}}  # older files
    lines = [f"== QuadraNAS search: {device} target {target_ms:.3f} ms"
             + "".join(f", {n} {b['target_ms']:.3f} ms" for n, b in budgets.items() if n != device) + " ==",
             f"architecture ({m['derivation']}): " + " ".join(c.replace("quadra_", "") for c in arch.choices)]
    for name, lat in m["latency_ms"].items():
        b = budgets.get(name)
        flag = "" if b is None else (f" <= target ({100 * b['used']:.0f}% of it)" if b["used"] <= 1 + 1e-9
                                     else " > TARGET")
        lines.append(f"  {name:5s} {lat['ms']:9.3f} ms{flag}{whole_note(lat)}  [{lat['predictor']}: "
                     f"{lat['provenance']}" + (f"; {lat['error_note']}" if lat["error_note"] else "") + "]")
    dep = m["deployment"]
    lines += [f"deployment {'x'.join(map(str, dep['input_shape']))}: {dep['params'] / 1e6:.2f}M params, "
              f"{dep['macs'] / 1e6:.0f}M MACs; held-out top-1 in the supernet {m['val_top1_supernet']:.3f}",
              f"wall time {m['search']['wall_s']:.0f} s; outputs in {run_dir}: arch.json checkpoint.pt tb/ "
              "history.csv probabilities.png",
              f"retrain: python -m nas.retrain {override_arg('arch', run_dir / 'arch.json')}"]
    return "\n".join(lines)


@hydra.main(version_base=None, config_path="pkg://conf", config_name="search")
def _main(cfg: DictConfig) -> None:
    code = run_cli(lambda: search(cfg, hydra_run_dir()))
    if code:
        sys.exit(code)


def main() -> None:
    """The ``search`` command: its own ``--help`` (every option described), else Hydra's run."""
    show_help_if_asked("search")
    _main()


if __name__ == "__main__":
    main()
