"""The one training loop: (re)train a standalone network, evaluate it, deploy it.

Used by ``nas.retrain`` (searched architectures, optionally initialised from the supernet or
from a first-order checkpoint), ``nas.train`` (registered fixed models, first-order twins) and
``nas.evaluate`` (re-evaluate a saved checkpoint).

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
import fcntl
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nas.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_checked,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nas import tb
from nas.config import check_config
from nas.data import DataInfo, DatasetNotFoundError, get_dataset, make_loader
from nas.loops import (
    cosine_lr,
    epoch_loader,
    evaluate,
    finish_distributed,
    init_distributed,
    seed_everything,
    set_lr,
    set_threads,
)
from search_spaces.arch import Arch, ArchError, build_net
from search_spaces.blocks import parse_op
from search_spaces.io import atomic_write_text
from search_spaces.quadranet import MODELS, quadranet_arch
from search_spaces.spaces import SearchSpace, space_from_config, space_of
from search_spaces.summary import count_macs, count_params

log = logging.getLogger("nas.trainer")

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
ONNX = "model.onnx"
HISTORY = "history.csv"
DEPLOY_INPUT = (3, 224, 224)
DEPLOY_CLASSES = 1000
# config keys that may differ when a run is resumed (they do not change the trained weights; a search's
# derivation only reads the trained supernet, so a finished supernet can be derived again another way)
RESUME_FREE = ("threads", "eval", "results_csv", "train.stop_after", "train.epochs", "derive", "keep_checkpoint")


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or inf; the last good checkpoint is kept."""


# -- what to train ------------------------------------------------------------------------
@dataclass
class Job:
    arch: Arch  # exactly the network trained (first-order twin and dataset macro applied)
    source: Arch  # the architecture as given (arch.json or the registered model at the dataset shape)
    model: str | None = None  # registered model name, if any
    arch_path: str | None = None
    first_order: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = self.model or self.arch_path or self.arch.space
        return f"{name} (first-order twin)" if self.first_order else name


def first_order_twin(arch: Arch) -> Arch:
    """Every ``quadra_kK_eE`` op replaced by ``convnext_kK_eE`` (same block, plain depthwise conv)."""
    if not any(parse_op(c)[0] == "quadra" for c in arch.choices):
        raise ValueError(f"first_order=true needs an architecture with quadra_* ops; {arch.space!r} has "
                         f"{sorted(set(arch.choices))}")
    choices = tuple(c.replace("quadra_", "convnext_", 1) if c.startswith("quadra_") else c for c in arch.choices)
    return Arch(arch.space, arch.macro, choices, {"first_order_twin": True})


SMALL_INPUT_SIDE = 32  # inputs up to 32x32 get a stride-2 stem, larger ones stride 4 (as QuadraNet's)


def stem_stride_for(input_shape: tuple[int, ...]) -> int:
    """The stem stride a network gets at this input size (``model=`` and re-shaped arch files alike)."""
    return 2 if max(input_shape[1:]) <= SMALL_INPUT_SIDE else 4


def adapt_macro(arch: Arch, info: DataInfo) -> tuple[Arch, str | None]:
    """The arch at the dataset's input shape and class count (stages and choices kept).

    When the input size changes, the stem stride becomes the one :func:`stem_stride_for` picks for the
    new size: a 224-pixel arch file (stem stride 4) on 28x28 images would otherwise shrink its maps to
    1x1 before the last stage.
    """
    m = arch.macro
    if tuple(m.input_shape) == tuple(info.input_shape) and m.num_classes == info.num_classes:
        return arch, None
    stem = m.stem_stride if tuple(m.input_shape[1:]) == tuple(info.input_shape[1:]) else stem_stride_for(info.input_shape)
    note = (f"architecture macro rebuilt for dataset {info.name}: input {list(m.input_shape)} -> "
            f"{list(info.input_shape)}, classes {m.num_classes} -> {info.num_classes}, stem stride "
            f"{m.stem_stride} -> {stem} (stages and choices kept)")
    macro = replace(m, input_shape=tuple(info.input_shape), num_classes=info.num_classes, stem_stride=stem)
    return replace(arch, macro=macro), note


def recorded_dataset(arch_path: str | Path) -> str | None:
    """The dataset an arch file was searched (or drawn) on, if it records one."""
    meta = Arch.load(arch_path).metadata
    search, config = meta.get("search") or {}, meta.get("config") or {}
    name = search.get("dataset") or (config.get("dataset") or {}).get("name")
    return str(name) if name else None


def resolve_job(cfg: DictConfig, info: DataInfo) -> Job:
    arch_path, model = cfg.get("arch"), cfg.get("model")
    if (arch_path is None) == (model is None):
        raise ValueError("pass exactly one of arch=PATH/arch.json or model=NAME "
                         f"(registered models: {', '.join(MODELS)})")
    if model is not None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
        stem = stem_stride_for(info.input_shape)
        source = quadranet_arch(model, input_shape=info.input_shape, num_classes=info.num_classes, stem_stride=stem)
        notes = []
    else:
        source = Arch.load(arch_path)
        source, note = adapt_macro(source, info)
        notes = [note] if note else []
    arch = first_order_twin(source) if cfg.first_order else source
    return Job(arch, source, model, str(arch_path) if arch_path is not None else None, bool(cfg.first_order), notes)


# -- initialisation ------------------------------------------------------------------------
@torch.no_grad()
def inherit_from_supernet(arch: Arch, net: nn.Module, supernet_checkpoint: Path) -> nn.Module:
    """Copy the chosen paths' weights (and stem/transitions/fixed layers/head) of a search's supernet.

    ``arch`` must be the search's exported architecture (its metadata holds the search config).
    Returns the loaded, pinned supernet (for comparisons).
    """
    from supernet.supernet import Supernet

    search_cfg = arch.metadata.get("config")
    if not isinstance(search_cfg, dict) or "search_space" not in search_cfg:
        raise ValueError("init=supernet needs an arch.json written by nas.search (its metadata.config holds the "
                         "search space); this one has none")
    state = load_checkpoint(supernet_checkpoint, kind="supernet")
    sp_cfg = search_cfg["search_space"]
    space = space_from_config(sp_cfg).with_input(arch.macro.input_shape, arch.macro.num_classes,
                                                 sp_cfg.get("train_stem_stride"))
    if space.macro != arch.macro:
        raise ValueError(f"init=supernet: the architecture's macro {arch.macro} is not the search's training "
                         f"macro {space.macro}; retrain on the search's dataset or use init=scratch")
    supernet = Supernet(space)
    load_state_dict_checked(supernet, state["model"])
    supernet.pin(arch.choices)
    for choice, mixed, layer in zip(arch.choices, supernet.mixed_ops(), net.searchable_layers(), strict=True):
        load_state_dict_checked(layer, mixed.candidates[mixed.names.index(choice)].state_dict())
    own = net.fixed_parts()
    theirs = supernet.net.fixed_parts()
    if set(own) != set(theirs):
        raise CheckpointError(f"fixed parts differ: network {sorted(own)}, supernet {sorted(theirs)}")
    for name, part in own.items():
        load_state_dict_checked(part, theirs[name].state_dict())
    return supernet


def eval_weights(state: dict) -> dict:
    """The weights a trainer checkpoint evaluates: the EMA ones when it kept an EMA."""
    return state["ema"] if state.get("ema") is not None else state["model"]


@torch.no_grad()
def quadratic_state_from(state: dict, arch: Arch, memory_saving: bool = False) -> tuple[dict, str]:
    """Weights for ``build_net(arch)`` from a ``net`` checkpoint of ``arch`` itself or of its first-order twin.

    A first-order twin is converted with :func:`search_spaces.convert.quadratize` (QuadraNet V2: the
    linear branch holds the trained depthwise weights, the quadratic term starts at zero), so the
    quadratic network starts out computing the first-order function.
    """
    from search_spaces.convert import quadratize

    try:
        theirs = Arch.from_dict(state["arch"])
    except (KeyError, ArchError) as e:
        raise CheckpointError(f"checkpoint holds no valid architecture: {e}") from e
    if theirs.macro != arch.macro:
        raise CheckpointError(f"init checkpoint's macro {theirs.macro} differs from the network's {arch.macro}")
    if theirs.choices == arch.choices:
        return eval_weights(state), "weights of the same architecture"
    twin = first_order_twin(arch) if any(c.startswith("quadra_") for c in arch.choices) else None
    if twin is None or theirs.choices != twin.choices:
        raise CheckpointError(f"init checkpoint's architecture {list(theirs.choices)} is neither this one nor its "
                              "first-order twin")
    net = build_net(theirs)
    load_state_dict_checked(net, eval_weights(state))
    n = quadratize(net, memory_saving)
    return net.state_dict(), f"quadratized first-order twin ({n} depthwise convs -> quadratic, quadratic term 0)"


def initialise(cfg: DictConfig, job: Job, net: nn.Module) -> str:
    init = str(cfg.init)
    if init == "scratch":
        return "scratch"
    if init == "supernet":
        if job.arch_path is None or job.first_order:
            raise ValueError("init=supernet needs arch=PATH/arch.json from nas.search (and first_order=false)")
        if job.notes:
            raise ValueError("init=supernet needs the search's dataset shape; " + job.notes[0])
        path = Path(job.arch_path).parent / CHECKPOINT
        inherit_from_supernet(job.source, net, path)
        return f"supernet {path}"
    path = Path(init)
    if not path.is_file():
        raise FileNotFoundError(f"init={init}: no such file; valid: scratch, supernet or a checkpoint.pt of kind 'net'")
    weights, how = quadratic_state_from(load_checkpoint(path, kind="net"), job.arch, cfg.memory_saving)
    load_state_dict_checked(net, weights)
    return f"{path}: {how}"


# -- training pieces -----------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
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
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def _dataset_cfg(cfg_dataset) -> dict:
    if cfg_dataset is None:
        raise ValueError("no dataset configured")
    for key in ("name", "root"):
        if OmegaConf.is_missing(cfg_dataset, key):
            raise ValueError(f"dataset.{key} is required for dataset {cfg_dataset.get('name', '?')}: "
                             f"pass dataset.{key}=...")
    return OmegaConf.to_container(cfg_dataset, resolve=True)


def load_data(d: dict, train: bool = True):
    train_set = info = None
    if train:
        train_set, info = get_dataset(d["name"], "train", d.get("root"), d.get("image_size"), d.get("limit"))
    test_set, test_info = get_dataset(d["name"], "test", d.get("root"), d.get("image_size"), d.get("test_limit"))
    return train_set, test_set, info or test_info


def _without(d: dict, dotted: tuple[str, ...]) -> dict:
    d = copy.deepcopy(d)
    for key in dotted:
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return d


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: dict, config: dict, path: Path) -> None:
    """The one resume rule of search and retrain: configs may differ only in :data:`RESUME_FREE`."""
    a, b = _flat(_without(saved, RESUME_FREE)), _flat(_without(config, RESUME_FREE))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise CheckpointError(f"{path} was written by a run with a different config (differs in: {', '.join(diff)}); "
                              "resume with the same overrides or use a new run folder")


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


# -- the loop ---------------------------------------------------------------------------------
def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train (or resume) one network in ``run_dir``, then evaluate and export it.

    Returns the results (also in ``results.json``), or ``{"stopped_after_epoch": e}`` when
    ``train.stop_after`` ended this invocation early.
    """
    check_config(cfg, "retrain")
    run_dir = Path(run_dir)
    dist_info = init_distributed()
    set_threads(cfg.threads)
    config = OmegaConf.to_container(cfg, resolve=True)
    tc = cfg.train
    data_cfg = _dataset_cfg(cfg.dataset)
    train_set, test_set, info = load_data(data_cfg)
    job = resolve_job(cfg, info)
    for note in job.notes if dist_info.is_main else ():
        log.warning(note)

    seed_everything(cfg.seed)
    model = build_net(job.arch, tc.drop_path, cfg.memory_saving)
    ckpt_path = run_dir / CHECKPOINT
    resume = ckpt_path.exists()
    state = None
    if resume:
        state = load_checkpoint(ckpt_path, kind="net")
        check_resume_config(state["config"], config, ckpt_path)
        if state.get("arch") != job.arch.to_dict():
            raise CheckpointError(f"{ckpt_path} holds another architecture than {job.label}; use a new run folder")
        init_desc = state["init"]
    else:
        init_desc = initialise(cfg, job, model)
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
        set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], list(state["history"])
        train_time = float(state["train_time_s"])
        if dist_info.is_main:
            log.info("resumed from %s after epoch %d", ckpt_path, state["epoch"] + 1)
            if state["epochs"] != tc.epochs:
                log.warning("train.epochs changed from %d to %d: the learning-rate schedule differs from an "
                            "uninterrupted run", state["epochs"], tc.epochs)
    elif dist_info.is_main:
        log.info("training %s: %s init, %d params", job.label, init_desc, count_params(model))

    ddp = DistributedDataParallel(model) if dist_info.enabled else model
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
                "world_size": dist_info.world_size, "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "rng": rng_state()}

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
        for i, (x, y) in enumerate(bar):
            lr = cosine_lr(tc.lr, step, total_steps, warmup_steps)
            set_lr(optimizer, lr)
            logits = ddp(x)
            loss = compute_loss(logits, y, tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            bad = torch.tensor(float(not (_finite(loss.detach()) and _finite(grad_norm))))
            if dist_info.enabled:
                dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            if bad.item():
                kept = (f"the last good checkpoint (after epoch {start_epoch + ran}) is kept in {ckpt_path}"
                        if ckpt_path.exists() else "no checkpoint was written yet")
                raise TrainingDiverged(
                    f"loss is {loss.item()} (gradient norm {grad_norm.item()}) at epoch {epoch + 1}, step {i + 1} "
                    f"of {steps_per_epoch} (global step {step + 1}, lr {lr:.3g}); {kept}. "
                    "Lower train.lr or raise train.warmup_epochs")
            optimizer.step()
            step += 1
            if ema is not None:
                ema.update(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if dist_info.is_main and (i + 1) % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.2e}")
            tb.log_step(writer, step, train=loss.item())
        train_time += time.perf_counter() - t0
        ran += 1
        row = {"epoch": epoch + 1, "step": step, "lr": lr,
               "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "train_time_s": train_time}
        if cfg.eval.every_epoch:
            res = evaluate(eval_model, test_loader)
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
    test = {**evaluate(eval_model, test_loader), "n": len(test_set)}  # every rank (evaluate all-reduces)
    if not dist_info.is_main:
        return {"top1": test["top1"]}
    tb.log_hparams(writer, {"model": job.label, "dataset": info.name, "seed": cfg.seed, "epochs": epochs,
                            "lr": tc.lr, "batch_size": tc.batch_size, "drop_path": tc.drop_path},
                   {"test_top1": test["top1"], "test_loss": test["loss"]})
    writer.close()
    return report(run_dir, eval_model, job.arch, job.source, job.model, info, test, final, cfg.eval,
                  cfg.results_csv, evaluated="ema" if ema is not None else "model")


# -- evaluation and deployment ------------------------------------------------------------------
def deployment_arch(arch: Arch, source: Arch, model: str | None) -> tuple[Arch, SearchSpace | None, bool]:
    """The trained architecture at the deployment shape; its search space; whether its LUT applies."""
    space = space_of(source) if model is None else None
    if model is not None:
        macro = quadranet_arch(model).macro
    elif space is not None:
        macro = space.macro
    else:
        m = arch.macro
        stem = 4 if m.family == "quadra" and max(m.input_shape[1:]) <= 32 and m.stem_stride < 4 else m.stem_stride
        macro = replace(m, input_shape=DEPLOY_INPUT, num_classes=DEPLOY_CLASSES, stem_stride=stem)
    dep = Arch(arch.space, macro, arch.choices)
    lut_ok = space is not None and all(c in cands for c, cands in zip(arch.choices, space.all_candidates(),
                                                                           strict=True))
    return dep, space, lut_ok


def profile_latency(name: str, dep: Arch, space: SearchSpace | None, lut_ok: bool) -> dict:
    """Predicted latency on one device profile with its provenance; errors are recorded, not raised."""
    from latency.lut import deployment_space, get_table
    from latency.profiles import load_profile, resolve_predictor

    out = {"ms": None, "predictor": None, "provenance": None, "error_note": None, "method": None,
           "input_shape": None, "error": None}
    try:
        profile = load_profile(name)
        out["input_shape"] = list(profile.input_shape)
        if lut_ok:
            lat = get_table(space, profile, progress=False).latency(deployment_space(space, profile).arch(dep.choices))
            out["method"] = "lookup table of the search space (sum of per-layer entries)"
        else:
            net_arch = replace(dep, macro=replace(dep.macro, input_shape=tuple(profile.input_shape[1:])))
            lat = resolve_predictor(profile).module_ms(build_net(net_arch).eval(), profile.input_shape)
            out["method"] = "whole network"
        out.update(ms=lat.ms, predictor=lat.predictor, provenance=lat.provenance, error_note=lat.error_note)
    except Exception as e:  # noqa: BLE001 - a missing backend must not lose the trained network's results
        out["error"] = f"{type(e).__name__}: {e}"
        log.warning("latency on %s not available: %s", name, out["error"])
    return out


def report(run_dir: Path, net: nn.Module, arch: Arch, source: Arch, model: str | None, info: DataInfo,
           test: dict, state: dict, eval_cfg, results_csv: str | None, evaluated: str) -> dict:
    """Write ``results.json`` (and ``model.onnx``, a results-CSV row) for a trained network."""
    from latency.measured import MeasuredPredictor

    net.eval()
    shape = tuple(info.input_shape)
    dep, space, lut_ok = deployment_arch(arch, source, model)
    dep_net = build_net(dep)
    results = {
        "run_dir": str(run_dir), "model": model, "arch_path": state.get("arch_path"), "space": arch.space,
        "choices": list(arch.choices), "first_order": state.get("first_order", False), "init": state.get("init"),
        "notes": state.get("notes", []), "dataset": info.name, "num_test": test.get("n"),
        "top1": test["top1"], "test_loss": test["loss"], "evaluated_weights": evaluated,
        "epochs": state["epoch"] + 1, "train_time_s": state["train_time_s"], "world_size": state.get("world_size", 1),
        "params": count_params(net), "macs": count_macs(net, (1, *shape)), "input_shape": list(shape),
        "num_classes": info.num_classes,
        "deployment": {"input_shape": list(dep.macro.input_shape), "num_classes": dep.macro.num_classes,
                       "stem_stride": dep.macro.stem_stride, "params": count_params(dep_net),
                       "macs": count_macs(dep_net, (1, *dep.macro.input_shape)),
                       "search_space": space.name if space is not None else None, "lut": lut_ok},
        "latency_ms": {name: profile_latency(name, dep, space, lut_ok) for name in eval_cfg.profiles},
        "host_latency_ms": None, "onnx": None, "checkpoint": str(Path(run_dir) / CHECKPOINT),
        "arch": arch.to_dict(), "config": state["config"],
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if eval_cfg.host_latency:
        lat = MeasuredPredictor(threads=1, warmup=eval_cfg.latency_warmup,
                                repeats=eval_cfg.latency_repeats).module_ms(net, (1, *shape))
        results["host_latency_ms"] = {"ms": lat.ms, "predictor": lat.predictor, "provenance": lat.provenance,
                                      "error_note": lat.error_note, "input_shape": [1, *shape]}
    if eval_cfg.onnx:
        from nas.export import export_onnx
        results["onnx"] = export_onnx(net, shape, Path(run_dir) / ONNX)
    atomic_write_text(Path(run_dir) / RESULTS, json.dumps(results, indent=2, default=str) + "\n")
    if results_csv:
        append_results_row(Path(results_csv), results_row(results))
    log.info("%s", summary_text(results))
    return results


def results_row(r: dict) -> dict:
    row = {"run_dir": r["run_dir"], "model": r["model"] or r["arch_path"] or r["space"],
           "first_order": r["first_order"], "init": r["init"], "dataset": r["dataset"], "epochs": r["epochs"],
           "top1": r["top1"], "params": r["params"], "macs": r["macs"],
           "deploy_params": r["deployment"]["params"], "deploy_macs": r["deployment"]["macs"]}
    for name, lat in r["latency_ms"].items():
        row[f"latency_{name}_ms"] = lat["ms"]
    row["host_trained_ms"] = r["host_latency_ms"]["ms"] if r["host_latency_ms"] else None
    row["train_time_s"] = r["train_time_s"]
    row["evaluated_at"] = r["evaluated_at"]
    return row


def append_results_row(path: Path, row: dict) -> Path:
    """Add one row (replacing an earlier row of the same run folder); rewritten atomically under a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()
        if "run_dir" in old:
            old = old[old.run_dir != row["run_dir"]]
        new = pd.DataFrame([row])
        df = new if old.empty else pd.concat([old, new], ignore_index=True)
        return atomic_write_text(path, df.to_csv(index=False))


def summary_text(r: dict) -> str:
    lines = [f"== {r['model'] or r['arch_path'] or r['space']}{' (first-order)' if r['first_order'] else ''} on "
             f"{r['dataset']}: top-1 {r['top1']:.4f} ({r['evaluated_weights']} weights, {r['epochs']} epochs, "
             f"{r['train_time_s']:.0f} s training) ==",
             f"{r['params'] / 1e6:.3f}M params, {r['macs'] / 1e6:.2f}M MACs at {'x'.join(map(str, r['input_shape']))}; "
             f"deployment {'x'.join(map(str, r['deployment']['input_shape']))}: "
             f"{r['deployment']['params'] / 1e6:.2f}M params, {r['deployment']['macs'] / 1e6:.0f}M MACs"]
    for name, lat in r["latency_ms"].items():
        if lat["ms"] is None:
            lines.append(f"  {name:5s} n/a ({lat['error']})")
        else:
            note = f"; {lat['error_note']}" if lat["error_note"] else ""
            lines.append(f"  {name:5s} {lat['ms']:9.3f} ms  [{lat['predictor']}: {lat['provenance']}{note}]")
    if r["host_latency_ms"]:
        h = r["host_latency_ms"]
        lines.append(f"  trained net on this host, batch 1: {h['ms']:.3f} ms [{h['predictor']}; {h['error_note']}]")
    lines.append(f"outputs in {r['run_dir']}: results.json checkpoint.pt" + (" model.onnx" if r["onnx"] else ""))
    return "\n".join(lines)


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Re-evaluate a trainer checkpoint (``cfg.checkpoint``); rewrites ``results.json`` next to it."""
    check_config(cfg, "evaluate")
    set_threads(cfg.threads)
    path = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    if path is None:
        raise ValueError("pass checkpoint=PATH/checkpoint.pt (written by nas.train / nas.retrain)")
    state = load_checkpoint(path, kind="net")
    try:
        arch = Arch.from_dict(state["arch"])
        source = Arch.from_dict(state.get("source_arch", state["arch"]))
    except KeyError as e:
        raise CheckpointError(f"{path} holds no architecture ({e})") from e
    data_cfg = _dataset_cfg(cfg.dataset) if cfg.get("dataset") is not None else state["dataset"]
    _, test_set, info = load_data(data_cfg, train=False)
    if tuple(info.input_shape) != tuple(arch.macro.input_shape) or info.num_classes != arch.macro.num_classes:
        raise ValueError(f"dataset {info.name} gives {list(info.input_shape)} images of {info.num_classes} classes; "
                         f"the network takes {list(arch.macro.input_shape)} and {arch.macro.num_classes} classes")
    net = build_net(arch)
    load_state_dict_checked(net, eval_weights(state))
    test = {**evaluate(net, make_loader(test_set, cfg.eval.batch_size, False, 0)), "n": len(test_set)}
    evaluated = "ema" if state.get("ema") is not None else "model"
    return report(path.parent, net, arch, source, state.get("model_name"), info, test, state, cfg.eval,
                  cfg.results_csv, evaluated)


# -- command-line glue ----------------------------------------------------------------------------
USAGE_ERRORS = (ValueError, ArchError, DatasetNotFoundError, CheckpointError, FileNotFoundError)


def run_cli(fn: Callable[[], object]) -> int:
    """Run an entry point's work; ``error: ...`` on stderr and exit code 2 (1 if training diverged)."""
    ok = False
    try:
        fn()
        ok = True
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        finish_distributed(ok)
    return 0


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig
    return Path(HydraConfig.get().runtime.output_dir)
