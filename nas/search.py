"""Latency-constrained architecture search: ``python -m nas.search device=vpu latency=30ms``.

ProxylessNAS with binary gates on a QuadraBlock supernet. Warm-up epochs train the weights
only; then weight steps on the training split alternate with architecture steps on a
held-out split (one every ``arch.every`` weight steps). The latency term uses the lookup
table of the search device at its *deployment* input shape (e.g. 1x3x224x224), while the
supernet trains at the dataset's resolution (a proxy: 28x28 Fashion-MNIST with a stride-2
stem instead of stride 4). Everything lands in the Hydra run folder: ``arch.json``,
``checkpoint.pt`` (resumable: rerun with the same ``hydra.run.dir``), TensorBoard logs in
``tb/``, ``history.csv`` and ``probabilities.png``.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from latency.lut import LatencyTable, deployment_space, get_table
from latency.profiles import load_profile, profile_from_dict
from latency.units import parse_latency_ms
from nas.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nas.data import DatasetNotFoundError, get_dataset, make_loader, train_val_split
from nas.loops import (
    all_reduce_mean_,
    cosine_lr,
    epoch_loader,
    evaluate,
    finish_distributed,
    init_distributed,
    seed_everything,
    set_lr,
    set_threads,
)
from search_spaces.arch import build_net
from search_spaces.spaces import space_from_config
from search_spaces.summary import count_macs, count_params
from supernet.derive import InfeasibleTarget, derive
from supernet.loss import LatencyLoss
from supernet.supernet import Supernet

log = logging.getLogger("nas.search")
CHECKPOINT = "checkpoint.pt"


def _lut_tensors(table: LatencyTable, model: Supernet) -> list[torch.Tensor]:
    for ops, m in zip(table.ops(), model.mixed_ops(), strict=True):
        if tuple(ops) != m.names:
            raise RuntimeError(f"latency table candidates {ops} do not match the supernet's {m.names}")
    return [torch.tensor(ms, dtype=torch.float32) for ms in table.layer_ms()]


def _heatmap(model: Supernet):
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
    ax.set_title("architecture probabilities")
    fig.colorbar(im, ax=ax, label="probability")
    fig.tight_layout()
    return fig


def _export_ms(model: Supernet, lut: list[torch.Tensor], fixed_ms: float) -> float:
    """Table latency of the argmax architecture (what would be exported now)."""
    return fixed_ms + sum(float(t[int(m.alpha.argmax())]) for m, t in zip(model.mixed_ops(), lut))


def _weight_optimizer(t: DictConfig, params) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":  # the ProxylessNAS recipe (MBConv nets)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":  # the QuadraNet recipe (LayerNorm/GELU blocks)
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    raise ValueError(f"unknown train.optimizer {t.optimizer!r}; valid: adamw, sgd")


def search(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or resume) one search; returns the summary also written into ``arch.json``."""
    t_start = time.perf_counter()
    dist_info = init_distributed()
    set_threads(cfg.threads)
    target_ms = parse_latency_ms(cfg.latency)
    profile = profile_from_dict(OmegaConf.to_container(cfg.device, resolve=True))
    space = space_from_config(OmegaConf.to_container(cfg.search_space, resolve=True))
    config = OmegaConf.to_container(cfg, resolve=True)

    # Latency tables at the deployment shape: search device first, then the others for logging.
    devices = [profile.name] + [d for d in cfg.log_devices if d != profile.name]
    tables = {}
    for name in devices:
        tables[name] = get_table(space, profile if name == profile.name else load_profile(name),
                                 progress=dist_info.is_main)
    table = tables[profile.name]
    lo, hi = table.range_ms()
    if target_ms < lo:
        raise InfeasibleTarget(f"latency target {target_ms:.3f} ms on {profile.name} is below the space's minimum "
                               f"{lo:.3f} ms ({table.predictor}); the space spans {lo:.3f}-{hi:.3f} ms")
    if target_ms > hi:
        warnings.warn(f"latency target {target_ms:.3f} ms is above the space's maximum {hi:.3f} ms on "
                      f"{profile.name}: the latency term will not constrain the search", stacklevel=1)

    # Data: the training split minus a held-out part for architecture steps.
    d = cfg.dataset
    train_set, info = get_dataset(d.name, "train", d.root, d.image_size, d.limit)
    train_part, val_part = train_val_split(train_set, cfg.train.val_fraction, cfg.seed)

    seed_everything(cfg.seed)
    train_space = space.with_input(info.input_shape, info.num_classes, cfg.search_space.train_stem_stride)
    model = Supernet(train_space, cfg.train.drop_path, layer_scale_init=cfg.train.layer_scale_init)
    luts = {name: _lut_tensors(t, model) for name, t in tables.items()}
    w_opt = _weight_optimizer(cfg.train, model.weight_parameters())
    if cfg.arch.optimizer == "adam":  # the paper's
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=cfg.arch.lr, betas=(0.0, 0.999), weight_decay=0.0)
    elif cfg.arch.optimizer == "sgd":
        a_opt = torch.optim.SGD(model.arch_parameters(), lr=cfg.arch.lr)
    else:
        raise ValueError(f"unknown arch.optimizer {cfg.arch.optimizer!r}; valid: adam, sgd")
    lcfg = OmegaConf.to_container(cfg.loss, resolve=True)
    loss_fn = LatencyLoss(lcfg.pop("kind"), target_ms, **lcfg)
    path_gen = torch.Generator().manual_seed(cfg.seed)
    # depthwise-conv weight grads come back in another memory layout than DDP's buckets: harmless
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if dist_info.enabled else model

    total_epochs = cfg.train.warmup_epochs + cfg.train.epochs
    steps_per_epoch = len(train_part) // cfg.train.batch_size
    total_steps = total_epochs * steps_per_epoch
    start_epoch, step, history = 0, 0, []

    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, kind="supernet")
        if state["config"] != config:
            diff = sorted(k for k in set(config) | set(state["config"]) if config.get(k) != state["config"].get(k))
            raise CheckpointError(f"{ckpt_path} was written by a run with a different config (differs in: "
                                  f"{', '.join(diff)}); resume with the same overrides or use a new run folder")
        model.load_state_dict(state["model"])
        w_opt.load_state_dict(state["w_opt"])
        a_opt.load_state_dict(state["a_opt"])
        loss_fn.load_state_dict(state["loss"])
        path_gen.set_state(state["path_gen"])
        set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
        if dist_info.is_main:
            log.info("resumed from %s after epoch %d", ckpt_path, state["epoch"])

    writer = None
    if dist_info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)

    arch_params = model.arch_parameters()
    for epoch in range(start_epoch, total_epochs):
        joint = epoch >= cfg.train.warmup_epochs
        arch_on = joint and not (cfg.arch.skip_first_joint_epoch and epoch == cfg.train.warmup_epochs)
        train_loader, val_loader = (epoch_loader(part, cfg.train.batch_size, cfg.seed, epoch, dist_info, stream)
                                    for stream, part in enumerate((train_part, val_part)))
        val_iter = iter(val_loader)
        model.train()
        stats = {"loss": [], "acc": [], "arch_loss": [], "arch_ce": []}
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{total_epochs} {'search' if joint else 'warm-up'}",
                   disable=not dist_info.is_main, leave=False)
        for x, y in bar:
            # weight step: one sampled path, ordinary autograd
            set_lr(w_opt, cosine_lr(cfg.train.lr, step, total_steps))
            model.resample("weight", cfg.mode, path_gen)
            logits = ddp(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.train.label_smoothing)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.weight_parameters(), cfg.train.grad_clip)
            w_opt.step()
            step += 1
            stats["loss"].append(loss.item())
            stats["acc"].append((logits.argmax(1) == y).float().mean().item())

            if arch_on and step % cfg.arch.every == 0:
                xv, yv = next(val_iter, (None, None))
                if xv is None:
                    val_iter = iter(val_loader)
                    xv, yv = next(val_iter)
                model.resample("arch", cfg.mode, path_gen)
                ce = F.cross_entropy(model(xv), yv)
                expected = model.expected_latency_ms(luts[profile.name], table.fixed_ms)
                arch_loss = loss_fn(ce, expected)
                grads = torch.autograd.grad(arch_loss, arch_params)  # weights' .grad untouched
                all_reduce_mean_(list(grads))
                for p, g in zip(arch_params, grads):
                    p.grad = g
                a_opt.step()
                model.rescale()
                loss_fn.update(_export_ms(model, luts[profile.name], table.fixed_ms))
                stats["arch_loss"].append(arch_loss.item())
                stats["arch_ce"].append(ce.item())
            if dist_info.is_main and step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(stats['loss'][-10:]):.3f}",
                                lat=f"{model.expected_latency_ms(luts[profile.name], table.fixed_ms).item():.1f}ms")

        # end of epoch: held-out accuracy of the current argmax path, latencies, checkpoint
        model.pin(model.export().choices)
        val = evaluate(model, make_loader(val_part, 256, False, 0))
        with torch.no_grad():
            e_lat = {n: model.expected_latency_ms(luts[n], tables[n].fixed_ms).item() for n in tables}
        row = {"epoch": epoch + 1, "phase": "search" if joint else "warm-up", "step": step,
               "train_loss": float(np.mean(stats["loss"])), "train_acc": float(np.mean(stats["acc"])),
               "val_top1_argmax": val["top1"], "arch_loss": float(np.mean(stats["arch_loss"] or [np.nan])),
               "entropy": model.entropy().item(), "constraint_weight": loss_fn.weight.item(),
               "argmax_ms": _export_ms(model, luts[profile.name], table.fixed_ms),
               **{f"E[LAT]_{n}_ms": v for n, v in e_lat.items()}}
        history.append(row)
        if dist_info.is_main:
            for k, v in row.items():
                if isinstance(v, float) and np.isfinite(v):
                    writer.add_scalar(k.replace("[", "").replace("]", ""), v, step)
            writer.add_figure("arch/probabilities", _heatmap(model), step)
            writer.flush()
            log.info("epoch %d/%d %s: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                      if isinstance(v, float)), epoch + 1, total_epochs, row["phase"])
            save_checkpoint(ckpt_path, {
                "kind": "supernet", "config": config, "epoch": epoch, "step": step, "history": history,
                "model": model.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
                "loss": loss_fn.state_dict(), "path_gen": path_gen.get_state(), "rng": rng_state()})

    summary = _export(cfg, run_dir, model, space, train_space, tables, target_ms, profile.name, history,
                      dist_info, time.perf_counter() - t_start)
    if writer is not None:
        writer.close()
    return summary


def _export(cfg, run_dir, model, space, train_space, tables, target_ms, device, history, dist_info, wall_s):
    table = tables[device]
    log_probs = [torch.log_softmax(a.detach(), 0).tolist() for a in model.arch_parameters()]
    argmax = model.export()
    picks = derive(log_probs, table.layer_ms(), table.fixed_ms, target_ms if cfg.derive.budgeted else None)
    choices = [m.names[i] for m, i in zip(model.mixed_ops(), picks)]
    arch = train_space.arch(choices)
    dep_arch = deployment_space(space, load_profile(device)).arch(choices)
    dep_net = build_net(dep_arch)
    latency = {n: {"ms": t.arch_ms(arch), "predictor": t.predictor, "provenance": t.provenance,
                   "error_note": t.error_note, "method": "sum of per-layer table entries"}
               for n, t in tables.items()}
    meta = {
        "search": {"device": device, "target_ms": target_ms, "loss": cfg.loss.kind, "mode": cfg.mode,
                   "seed": cfg.seed, "dataset": cfg.dataset.name, "epochs": len(history),
                   "world_size": dist_info.world_size, "wall_s": round(wall_s, 1)},
        "derivation": "argmax" if tuple(choices) == argmax.choices else "budgeted (argmax exceeded the target)",
        "argmax_choices": list(argmax.choices),
        "latency_ms": latency,
        "meets_target": latency[device]["ms"] <= target_ms + 1e-9,
        "deployment": {"input_shape": list(dep_arch.macro.input_shape), "num_classes": dep_arch.macro.num_classes,
                       "params": count_params(dep_net), "macs": count_macs(dep_net, (1, *dep_arch.macro.input_shape))},
        "train_params": count_params(build_net(arch)),
        "final_val_top1_argmax": history[-1]["val_top1_argmax"] if history else None,
        "probabilities": [[round(p, 4) for p in m.probs().tolist()] for m in model.mixed_ops()],
        "config": OmegaConf.to_container(cfg, resolve=True),
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
        arch.save(run_dir / "arch.json")
        pd.DataFrame(history).to_csv(run_dir / "history.csv", index=False)
        import matplotlib.pyplot as plt
        fig = _heatmap(model)
        fig.savefig(run_dir / "probabilities.png", dpi=100)
        plt.close(fig)
        print(_summary_text(arch, run_dir, target_ms, device))
    return arch.metadata


def _summary_text(arch, run_dir: Path, target_ms: float, device: str) -> str:
    m = arch.metadata
    lines = [f"== QuadraNAS search: {device} target {target_ms:.3f} ms ==",
             f"architecture ({m['derivation']}): " + " ".join(c.replace("quadra_", "") for c in arch.choices)]
    for name, lat in m["latency_ms"].items():
        flag = (" <= target" if m["meets_target"] else " > TARGET") if name == device else ""
        lines.append(f"  {name:5s} {lat['ms']:9.3f} ms{flag}  [{lat['predictor']}: {lat['provenance']}"
                     + (f"; {lat['error_note']}" if lat["error_note"] else "") + "]")
    dep = m["deployment"]
    lines += [f"deployment {'x'.join(map(str, dep['input_shape']))}: {dep['params'] / 1e6:.2f}M params, "
              f"{dep['macs'] / 1e6:.0f}M MACs; held-out top-1 of the argmax path {m['final_val_top1_argmax']:.3f}",
              f"wall time {m['search']['wall_s']:.0f} s; outputs in {run_dir}: arch.json checkpoint.pt tb/ "
              "history.csv probabilities.png",
              f"retrain: python -m nas.retrain arch={run_dir / 'arch.json'}"]
    return "\n".join(lines)


@hydra.main(version_base=None, config_path="pkg://conf", config_name="search")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        search(cfg, run_dir)
    except (ValueError, DatasetNotFoundError, CheckpointError) as e:
        finish_distributed(ok=False)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finish_distributed()


if __name__ == "__main__":
    main()
