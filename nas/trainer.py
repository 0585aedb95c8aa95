"""The one training loop: (re)train a standalone network, evaluate it, deploy it.

Used by ``nas.retrain`` (searched architectures, optionally initialised from the supernet or
from a first-order checkpoint) and ``nas.train`` (registered fixed models, first-order twins);
what is trained comes from :mod:`nas.job`, the final evaluation and deployment report from
:mod:`nas.report`.

Recipe: AdamW (no weight decay on biases, norms and layer scales), linear warm-up then cosine
per step, gradient clipping, label smoothing, drop path, optional EMA of the weights (the EMA
weights are the ones evaluated and exported). The data order of epoch ``e`` depends only on
``(seed, e)``; RNG states, optimizer and EMA are checkpointed after every epoch, so a rerun in
the same run folder resumes and reaches the same weights as an uninterrupted run.

Run folder: ``checkpoint.pt`` (kind ``net``: weights, arch, config, epoch, optimizer, EMA, RNG),
``results.json``, ``model.onnx``, ``history.csv``, ``tb/``; one row per run in a results CSV.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from nas import accelerator, tb
from nas.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    check_resume_config,
    device_change,
    load_checkpoint,
    load_state_dict_checked,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nas.config import check_config
from nas.data import dataset_config, load_data, make_loader, to_device
from nas.job import check_runs, initialise, resolve_job
from nas.loops import (
    TrainingDiverged,
    cosine_lr,
    epoch_loader,
    evaluate,
    init_distributed,
    seed_everything,
    set_lr,
    set_threads,
    wrap_ddp,
)
from nas.report import EvaluatedRun, report
from nas.runlock import run_folder
from search_spaces.arch import Arch, build_net
from search_spaces.io import atomic_write_text
from search_spaces.quadratic import set_impl
from search_spaces.summary import count_params

log = logging.getLogger("nas.trainer")

HISTORY = "history.csv"


# -- training pieces -----------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) or null, got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.lerp_(m, 1.0 - self.decay)
            else:
                e.copy_(m)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (not on biases, norms or layer scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            skip = p.ndim <= 1 or name.rsplit(".", 1)[-1].startswith("gamma")
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compute_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The training loss: cross-entropy with label smoothing (tests patch it to force a divergence)."""
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def make_optimizer(model: nn.Module, tc: DictConfig) -> torch.optim.Optimizer:
    """AdamW at ``tc.lr`` with ``tc.weight_decay`` on conv/linear weights only (:func:`param_groups`)."""
    return torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.999))


def train_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, accel: accelerator.Accelerator,
               x: torch.Tensor, y: torch.Tensor, lr: float, tc: DictConfig) -> tuple[torch.Tensor, ...]:
    """One weight step of a standalone network, the only one: ``nas.retrain`` and ``derive.method=train`` both
    step with it. ``net`` runs the forward (``model`` itself, or its DDP wrapper), ``model``'s parameters are
    clipped. Returns the detached loss, the gradient norm (None without clipping) and the logits, all left on
    the device: nothing here waits for the accelerator."""
    set_lr(optimizer, lr)
    with accel.autocast():
        logits = net(x)
        loss = compute_loss(logits, y, tc.label_smoothing)
    grad_norm = accel.backward(loss, optimizer, model.parameters(), tc.grad_clip)
    accel.apply(optimizer)  # a non-finite step is caught by the caller's next read
    return loss.detach(), grad_norm, logits


@dataclass(frozen=True)
class _Read:
    """One training step's statistics, read back to the host."""

    index: int  # in the epoch
    step: int  # global, before the step
    lr: float
    loss: float
    grad_norm: float | None
    correct: int
    bad: bool  # non-finite loss (or gradient norm, unless the loss scaler expects overflows), on any rank


class _Window:
    """The last steps' statistics, kept on the device and read in ONE host read (with, under DDP, one
    all-reduce of the divergence flags) by :meth:`flush`: the GPU never waits for a step's loss."""

    def __init__(self, accel, distributed: bool) -> None:
        self.accel, self.distributed = accel, distributed
        self.host: list[tuple[int, int, float, int]] = []
        self.values: list[torch.Tensor] = []
        self.has_norm = True

    def add(self, index: int, step: int, lr: float, n: int, loss: torch.Tensor, grad_norm: torch.Tensor | None,
            correct: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss)
        if grad_norm is not None and not self.accel.overflow_expected:
            bad = bad | ~torch.isfinite(grad_norm)
        self.has_norm = grad_norm is not None
        norm = grad_norm if grad_norm is not None else torch.zeros((), device=loss.device)
        self.host.append((index, step, lr, n))
        self.values.append(torch.stack([bad.double(), loss.double(), norm.double(), correct.double()]))

    def flush(self) -> list[tuple[int, _Read]]:
        if not self.values:
            return []
        table = torch.stack(self.values)
        if self.distributed:  # every rank stops at the same step when any diverged
            bad = table[:, 0].contiguous()
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            table[:, 0] = bad
        rows = table.cpu().numpy().tolist()
        out = [(n, _Read(i, step, lr, loss, norm if self.has_norm else None, int(correct), bool(bad)))
               for (i, step, lr, n), (bad, loss, norm, correct) in zip(self.host, rows, strict=True)]
        self.host, self.values = [], []
        return out


# -- the loop ---------------------------------------------------------------------------------
def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train (or resume) one network in ``run_dir``, then evaluate and export it.

    Returns the results (also in ``results.json``), or ``{"stopped_after_epoch": e}`` when
    ``train.stop_after`` ended this invocation early.
    """
    check_config(cfg, "retrain")
    with run_folder(run_dir):  # one writer per run folder
        return _train(cfg, Path(run_dir))


def _train(cfg: DictConfig, run_dir: Path) -> dict:
    run = _start(cfg, run_dir)
    for epoch in range(run.start_epoch, run.epochs):
        if cfg.train.stop_after is not None and run.ran >= int(cfg.train.stop_after):
            return _stop(run, epoch)
        _end_epoch(run, epoch, _train_epoch(run, epoch))
    return _finish(run)


@dataclass
class _Run:
    """One trainer run: what it trains, with what, where, and how far it got (``_start`` builds it)."""

    cfg: DictConfig
    config: dict  # the resolved config the checkpoint carries
    run_dir: Path
    accel: accelerator.Accelerator
    dist_info: object  # nas.loops.DistInfo
    job: object  # nas.job.Job
    info: object  # nas.data.DataInfo
    data_cfg: dict
    train_set: object
    test_set: object
    model: nn.Module
    ddp: nn.Module  # the model, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    init_desc: str
    epochs: int
    steps_per_epoch: int
    writer: object = None
    start_epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    train_time: float = 0.0
    ran: int = 0  # epochs trained by this invocation

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def snapshot(self, epoch: int) -> dict:
        job = self.job
        return {"kind": "net", "config": self.config, "arch": job.arch.to_dict(), "source_arch": job.source.to_dict(),
                "model_name": job.model, "arch_path": job.arch_path, "first_order": job.first_order,
                "init": self.init_desc, "notes": job.notes, "dataset": self.data_cfg,
                "input_shape": list(self.info.input_shape), "epoch": epoch, "step": self.step, "epochs": self.epochs,
                "history": self.history, "train_time_s": self.train_time, "world_size": self.dist_info.world_size,
                "device": str(self.accel.device), "precision": self.accel.precision,
                "model": self.model.state_dict(), "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scaler": self.accel.scaler.state_dict(),
                "rng": rng_state()}


def _start(cfg: DictConfig, run_dir: Path) -> _Run:
    """Data, the network, its initial or resumed weights, the optimizer: everything the epochs need."""
    accel = accelerator.from_config(cfg)
    dist_info = init_distributed(accel)
    set_threads(cfg.threads)
    tc = cfg.train
    data_cfg = dataset_config(cfg.dataset)
    train_set, test_set, info = load_data(data_cfg)
    train_set, test_set = to_device((train_set, test_set), accel.device)  # in-memory data: copied once
    job = resolve_job(cfg, info)
    for note in job.notes if dist_info.is_main else ():
        log.warning(note)
    seed_everything(cfg.seed)
    model = build_net(job.arch, tc.drop_path, cfg.memory_saving)
    set_impl(model, cfg.get("quad_impl", "auto"))
    config = OmegaConf.to_container(cfg, resolve=True)
    state = _resumable_state(run_dir / CHECKPOINT, config, job)
    init_desc = state["init"] if state is not None else initialise(cfg, job, model)
    check_runs(job.arch, job.label)  # maps shrunk below a kernel fail here, not in the first step
    accel.module(model)  # before the optimizer and the EMA, so that their state lives on the device too
    optimizer = make_optimizer(model, tc)
    ema = EMA(model, float(tc.ema_decay)) if tc.ema_decay is not None else None
    steps_per_epoch = len(epoch_loader(train_set, tc.batch_size, cfg.seed, 0, dist_info))
    if steps_per_epoch == 0 and tc.epochs > 0:
        raise ValueError(f"train.batch_size={tc.batch_size} is larger than the training set ({len(train_set)})")
    run = _Run(cfg, config, run_dir, accel, dist_info, job, info, data_cfg, train_set, test_set, model,
               wrap_ddp(model, accel) if dist_info.enabled else model, optimizer, ema, init_desc, int(tc.epochs),
               steps_per_epoch)
    if state is not None:
        _resume(run, state)
    elif dist_info.is_main:
        log.info("training %s: %s init, %d params, on %s", job.label, init_desc, count_params(model),
                 accel.describe())
    run.writer = tb.open_writer(run_dir, run.step) if dist_info.is_main else None
    if run.start_epoch > run.epochs and dist_info.is_main:
        log.warning("%s already holds %d epochs, more than train.epochs=%d; evaluating it as it is",
                    run.ckpt_path, run.start_epoch, run.epochs)
    return run


def _resumable_state(path: Path, config: dict, job) -> dict | None:
    """The run folder's checkpoint, if any, checked to be this run's."""
    if not path.exists():
        return None
    state = load_checkpoint(path, kind="net")
    # the network decides, not the file that names it: another copy of the same choices (a benchmark's
    # draw of another band, say, with its own path and metadata) resumes the same run
    check_resume_config(state["config"], config, path, free=("arch",))
    if "arch" not in state or Arch.from_dict(state["arch"]) != job.arch:  # Arch equality skips metadata
        raise CheckpointError(f"{path} holds another architecture than {job.label}; use a new run folder")
    return state


def _resume(run: _Run, state: dict) -> None:
    """Weights, optimizer, EMA, scaler, RNG streams and counters from the checkpoint."""
    path = run.ckpt_path
    load_state_dict_checked(run.model, state["model"])
    try:
        run.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from e
    if run.ema is not None:
        if state.get("ema") is None:
            raise CheckpointError(f"{path} has no EMA weights but train.ema_decay is set")
        load_state_dict_checked(run.ema.module, state["ema"])
    if state.get("scaler"):
        run.accel.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    change = device_change(state, run.accel.device, run.accel.precision)
    run.start_epoch, run.step, run.history = state["epoch"] + 1, state["step"], list(state["history"])
    run.train_time = float(state["train_time_s"])
    if run.dist_info.is_main:
        if change:
            log.warning("resuming %s: %s", path, change)
        log.info("resumed from %s after epoch %d", path, state["epoch"] + 1)
        if state["epochs"] != run.epochs:
            log.warning("train.epochs changed from %d to %d: the learning-rate schedule differs from an "
                        "uninterrupted run", state["epochs"], run.epochs)


def _train_epoch(run: _Run, epoch: int) -> dict:
    """One epoch of steps; its history row (train loss and accuracy, and test top-1 if eval.every_epoch)."""
    tc, accel = run.cfg.train, run.accel
    total_steps = run.epochs * run.steps_per_epoch
    warmup_steps = int(round(tc.warmup_epochs * run.steps_per_epoch))
    loader = epoch_loader(run.train_set, tc.batch_size, run.cfg.seed, epoch, run.dist_info)
    run.model.train()
    t0 = time.perf_counter()
    loss_sum = correct = seen = 0.0
    lr = tc.lr
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{run.epochs}", disable=not run.dist_info.is_main, leave=False)
    window = _Window(accel, run.dist_info.enabled)
    for i, (x, y) in enumerate(accel.batches(bar)):
        lr = cosine_lr(tc.lr, run.step, total_steps, warmup_steps)
        loss, grad_norm, logits = train_step(run.ddp, run.model, run.optimizer, accel, x, y, lr, tc)
        window.add(i, run.step, lr, len(y), loss, grad_norm, (logits.argmax(1) == y).sum())
        run.step += 1
        if run.ema is not None:
            run.ema.update(run.model)
        if (i + 1) % tb.STEP_EVERY and i + 1 < run.steps_per_epoch:
            continue
        for n, read in window.flush():  # the loop's one host read every tb.STEP_EVERY steps
            if read.bad:
                raise TrainingDiverged(_diverged(run, epoch, read))
            loss_sum += read.loss * n
            correct += read.correct
            seen += n
            tb.log_step(run.writer, read.step + 1, train=read.loss)
        if run.dist_info.is_main and (i + 1) % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}")
    run.train_time += time.perf_counter() - t0
    run.ran += 1
    row = {"epoch": epoch + 1, "step": run.step, "lr": lr, "train_loss": loss_sum / max(seen, 1),
           "train_acc": correct / max(seen, 1), "train_time_s": run.train_time}
    if run.cfg.eval.every_epoch:
        res = evaluate(run.eval_model, _test_loader(run), accel)
        row.update(test_top1=res["top1"], test_loss=res["loss"])
    return row


def _diverged(run: _Run, epoch: int, read: _Read) -> str:
    kept = (f"the last good checkpoint (after epoch {run.start_epoch + run.ran}) is kept in {run.ckpt_path}"
            if run.ckpt_path.exists() else "no checkpoint was written yet")
    return (f"loss is {read.loss} (gradient norm {read.grad_norm}) at epoch {epoch + 1}, step {read.index + 1} of "
            f"{run.steps_per_epoch} (global step {read.step + 1}, lr {read.lr:.3g}); {kept}. Lower train.lr or "
            "raise train.warmup_epochs")


def _test_loader(run: _Run):
    return make_loader(run.test_set, run.cfg.eval.batch_size, False, 0)


def _end_epoch(run: _Run, epoch: int, row: dict) -> None:
    """The epoch's row in the history, the logs and TensorBoard, and the checkpoint (rank 0)."""
    run.history.append(row)
    if not run.dist_info.is_main:
        return
    tb.log_row(run.writer, row, run.step)
    log.info("epoch %d/%d: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
             epoch + 1, run.epochs)
    save_checkpoint(run.ckpt_path, run.snapshot(epoch))
    atomic_write_text(run.run_dir / HISTORY, pd.DataFrame(run.history).to_csv(index=False))


def _stop(run: _Run, epoch: int) -> dict:
    """``train.stop_after`` reached: end this invocation; a rerun in the same folder goes on."""
    if run.dist_info.is_main:
        log.info("stopping after epoch %d (train.stop_after=%s); rerun with hydra.run.dir=%s to continue",
                 epoch, run.cfg.train.stop_after, run.run_dir)
    if run.writer is not None:
        run.writer.close()
    return {"stopped_after_epoch": epoch}


def _finish(run: _Run) -> dict:
    """Test top-1 on every rank, then (rank 0) the final checkpoint if none, TensorBoard and the report."""
    final = run.snapshot(run.start_epoch - 1 + run.ran)
    if run.dist_info.is_main and not run.ckpt_path.exists():  # nothing trained (epochs=0): checkpoint the start
        save_checkpoint(run.ckpt_path, final)
    test = {**evaluate(run.eval_model, _test_loader(run), run.accel), "n": len(run.test_set)}  # evaluate all-reduces
    if not run.dist_info.is_main:
        return {"top1": test["top1"]}
    tc = run.cfg.train
    tb.log_hparams(run.writer, {"model": run.job.label, "dataset": run.info.name, "seed": run.cfg.seed,
                                "epochs": run.epochs, "lr": tc.lr, "batch_size": tc.batch_size,
                                "drop_path": tc.drop_path},
                   {"test_top1": test["top1"], "test_loss": test["loss"]})
    run.writer.close()
    evaluated = "ema" if run.ema is not None else "model"
    return report(EvaluatedRun(run.run_dir, run.eval_model, run.job.arch, run.job.source, run.job.model, run.info,
                               test, final, evaluated), run.cfg.eval, run.cfg.results_csv)
