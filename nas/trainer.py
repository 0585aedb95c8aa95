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
from dataclasses import dataclass
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
from nas.job import initialise, resolve_job
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
    accel = accelerator.from_config(cfg)
    dist_info = init_distributed(accel)
    set_threads(cfg.threads)
    config = OmegaConf.to_container(cfg, resolve=True)
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
    ckpt_path = run_dir / CHECKPOINT
    resume = ckpt_path.exists()
    state = None
    if resume:
        state = load_checkpoint(ckpt_path, kind="net")
        # the network decides, not the file that names it: another copy of the same choices (a benchmark's
        # draw of another band, say, with its own path and metadata) resumes the same run
        check_resume_config(state["config"], config, ckpt_path, free=("arch",))
        if "arch" not in state or Arch.from_dict(state["arch"]) != job.arch:  # Arch equality skips metadata
            raise CheckpointError(f"{ckpt_path} holds another architecture than {job.label}; use a new run folder")
        init_desc = state["init"]
    else:
        init_desc = initialise(cfg, job, model)
    accel.module(model)  # before the optimizer and the EMA, so that their state lives on the device too
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.999))
    ema = EMA(model, float(tc.ema_decay)) if tc.ema_decay is not None else None
    start_epoch, step, history, train_time = 0, 0, [], 0.0
    if state is not None:
        load_state_dict_checked(model, state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_path}: optimizer state does not fit: {e}") from e
        if ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"{ckpt_path} has no EMA weights but train.ema_decay is set")
            load_state_dict_checked(ema.module, state["ema"])
        if state.get("scaler"):
            accel.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        change = device_change(state, accel.device, accel.precision)
        if change and dist_info.is_main:
            log.warning("resuming %s: %s", ckpt_path, change)
        start_epoch, step, history = state["epoch"] + 1, state["step"], list(state["history"])
        train_time = float(state["train_time_s"])
        if dist_info.is_main:
            log.info("resumed from %s after epoch %d", ckpt_path, state["epoch"] + 1)
            if state["epochs"] != tc.epochs:
                log.warning("train.epochs changed from %d to %d: the learning-rate schedule differs from an "
                            "uninterrupted run", state["epochs"], tc.epochs)
    elif dist_info.is_main:
        log.info("training %s: %s init, %d params, on %s", job.label, init_desc, count_params(model),
                 accel.describe())

    ddp = wrap_ddp(model, accel) if dist_info.enabled else model
    epochs = int(tc.epochs)
    steps_per_epoch = len(epoch_loader(train_set, tc.batch_size, cfg.seed, 0, dist_info))
    if steps_per_epoch == 0 and epochs > 0:
        raise ValueError(f"train.batch_size={tc.batch_size} is larger than the training set ({len(train_set)})")
    total_steps, warmup_steps = epochs * steps_per_epoch, int(round(tc.warmup_epochs * steps_per_epoch))
    test_loader = make_loader(test_set, cfg.eval.batch_size, False, 0)
    eval_model = ema.module if ema is not None else model

    writer = tb.open_writer(run_dir, step) if dist_info.is_main else None

    def snapshot(epoch: int) -> dict:
        return {"kind": "net", "config": config, "arch": job.arch.to_dict(), "source_arch": job.source.to_dict(),
                "model_name": job.model, "arch_path": job.arch_path, "first_order": job.first_order,
                "init": init_desc, "notes": job.notes, "dataset": data_cfg, "input_shape": list(info.input_shape),
                "epoch": epoch, "step": step, "epochs": epochs, "history": history, "train_time_s": train_time,
                "world_size": dist_info.world_size, "device": str(accel.device), "precision": accel.precision,
                "model": model.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "scaler": accel.scaler.state_dict(), "rng": rng_state()}

    if start_epoch > epochs and dist_info.is_main:
        log.warning("%s already holds %d epochs, more than train.epochs=%d; evaluating it as it is",
                    ckpt_path, start_epoch, epochs)
    ran, lr = 0, tc.lr
    for epoch in range(start_epoch, epochs):
        if tc.stop_after is not None and ran >= int(tc.stop_after):
            if dist_info.is_main:
                log.info("stopping after epoch %d (train.stop_after=%s); rerun with hydra.run.dir=%s to continue",
                         epoch, tc.stop_after, run_dir)
            if writer is not None:
                writer.close()
            return {"stopped_after_epoch": epoch}
        loader = epoch_loader(train_set, tc.batch_size, cfg.seed, epoch, dist_info)
        model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not dist_info.is_main, leave=False)
        window = _Window(accel, dist_info.enabled)
        for i, (x, y) in enumerate(accel.batches(bar)):
            lr = cosine_lr(tc.lr, step, total_steps, warmup_steps)
            set_lr(optimizer, lr)
            with accel.autocast():
                logits = ddp(x)
                loss = compute_loss(logits, y, tc.label_smoothing)
            grad_norm = accel.backward(loss, optimizer, model.parameters(), tc.grad_clip)
            window.add(i, step, lr, len(y), loss.detach(), grad_norm, (logits.argmax(1) == y).sum())
            accel.apply(optimizer)  # a non-finite step is caught at the next read, before anything is saved
            step += 1
            if ema is not None:
                ema.update(model)
            if (i + 1) % tb.STEP_EVERY and i + 1 < steps_per_epoch:
                continue
            for n, read in window.flush():  # the loop's one host read every tb.STEP_EVERY steps
                if read.bad:
                    kept = (f"the last good checkpoint (after epoch {start_epoch + ran}) is kept in {ckpt_path}"
                            if ckpt_path.exists() else "no checkpoint was written yet")
                    raise TrainingDiverged(
                        f"loss is {read.loss} (gradient norm {read.grad_norm}) at epoch {epoch + 1}, step "
                        f"{read.index + 1} of {steps_per_epoch} (global step {read.step + 1}, lr {read.lr:.3g}); "
                        f"{kept}. Lower train.lr or raise train.warmup_epochs")
                loss_sum += read.loss * n
                correct += read.correct
                seen += n
                tb.log_step(writer, read.step + 1, train=read.loss)
            if dist_info.is_main and (i + 1) % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}")
        train_time += time.perf_counter() - t0
        ran += 1
        row = {"epoch": epoch + 1, "step": step, "lr": lr,
               "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "train_time_s": train_time}
        if cfg.eval.every_epoch:
            res = evaluate(eval_model, test_loader, accel)
            row.update(test_top1=res["top1"], test_loss=res["loss"])
        history.append(row)
        if dist_info.is_main:
            tb.log_row(writer, row, step)
            log.info("epoch %d/%d: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
                     epoch + 1, epochs)
            save_checkpoint(ckpt_path, snapshot(epoch))
            pd.DataFrame(history).to_csv(run_dir / HISTORY, index=False)
    final = snapshot(start_epoch - 1 + ran)
    if dist_info.is_main and not ckpt_path.exists():  # nothing trained (epochs=0): checkpoint the start
        save_checkpoint(ckpt_path, final)
    test = {**evaluate(eval_model, test_loader, accel), "n": len(test_set)}  # every rank (evaluate all-reduces)
    if not dist_info.is_main:
        return {"top1": test["top1"]}
    tb.log_hparams(writer, {"model": job.label, "dataset": info.name, "seed": cfg.seed, "epochs": epochs,
                            "lr": tc.lr, "batch_size": tc.batch_size, "drop_path": tc.drop_path},
                   {"test_top1": test["top1"], "test_loss": test["loss"]})
    writer.close()
    evaluated = "ema" if ema is not None else "model"
    return report(EvaluatedRun(run_dir, eval_model, job.arch, job.source, job.model, info, test, final, evaluated),
                  cfg.eval, cfg.results_csv)
