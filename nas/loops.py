"""Pieces shared by every training entry point: seeding, schedules, evaluation, distribution."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from nas.accelerator import Accelerator, shares_gpus
from nas.data import make_loader

T = TypeVar("T")


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or inf; the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Seed of one epoch's data order: the same whether the run was resumed or not."""
    return (seed * 1_000_003 + epoch * 7_919 + stream) % 2**63


def epoch_loader(dataset, batch_size: int, seed: int, epoch: int, dist_info: DistInfo, stream: int = 0):
    """Shuffled loader of one epoch whose order depends only on (seed, epoch, stream), so a resumed
    run sees the same batches; under DDP each rank gets its shard of the global batch."""
    bs = batch_size // dist_info.world_size
    if bs < 1:
        raise ValueError(f"batch_size={batch_size} is smaller than the {dist_info.world_size} processes")
    s = epoch_seed(seed, epoch, stream)
    if dist_info.enabled:
        sampler = DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=s,
                                     drop_last=True)
        return make_loader(dataset, bs, False, s, drop_last=True, sampler=sampler)
    return make_loader(dataset, bs, True, s, drop_last=True)


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(t, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accel: Accelerator | None = None,
             reduce: bool = True) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over a loader (summed over ranks when distributed), on
    ``accel``'s device and in its precision (the model's device, float32, without one)."""
    accel = accel or Accelerator(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=accel.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accel.device)
    total = 0
    for x, y in accel.batches(loader):
        with accel.autocast():
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        total += y.numel()
    model.train(was_training)
    t = torch.stack([correct.double(), torch.tensor(float(total), dtype=torch.float64, device=accel.device),
                     loss_sum])
    if reduce and dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    correct, total, loss_sum = t.tolist()
    return {"top1": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(accel: Accelerator | None = None) -> DistInfo:
    """Join the process group when started by torchrun: NCCL when training on CUDA (one process per GPU,
    ``accel`` already on this process's ``LOCAL_RANK`` GPU), gloo on the CPU and when processes share a GPU
    (NCCL fails with 'Duplicate GPU' there; see :func:`nas.accelerator.shares_gpus`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        nccl = accel is not None and accel.is_cuda and not shares_gpus()
        dist.init_process_group("nccl" if nccl else "gloo", device_id=accel.device if nccl else None)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def wrap_ddp(model: nn.Module, accel: Accelerator, **kwargs) -> nn.Module:
    """``model`` in DistributedDataParallel (on CUDA bound to this process's GPU)."""
    from torch.nn.parallel import DistributedDataParallel
    if accel.is_cuda:
        return DistributedDataParallel(model, device_ids=[accel.device.index], output_device=accel.device.index,
                                       **kwargs)
    return DistributedDataParallel(model, **kwargs)


def finish_distributed(ok: bool = True) -> None:
    """Leave the process group; on success wait for every rank first, so no rank exits while
    another still works (gloo aborts a process torn down under a busy peer)."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _flat_groups(tensors: list[torch.Tensor]) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """The tensors grouped by dtype and device, each group flattened into one new buffer (in order)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return [(ts, torch.cat([t.reshape(-1) for t in ts])) for ts in groups.values()]


def _unflatten_(tensors: list[torch.Tensor], flat: torch.Tensor) -> None:
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(part.view(t.shape))


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` over the processes in place, in ONE all-reduce per dtype (not one per tensor)."""
    if not _distributed() or not tensors:
        return
    world = dist.get_world_size()
    for ts, flat in _flat_groups(tensors):
        dist.all_reduce(flat)
        _unflatten_(ts, flat.div_(world))


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes ((0, 1) outside a process group)."""
    return (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)


def shard(dataset):
    """This process's share of an evaluation set (every ``world_size``-th image from its rank on): :func:`evaluate`
    sums the counts over the processes, so the score is the whole set's, and extra GPUs divide the work."""
    if not _distributed():
        return dataset
    return Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Rank ``src``'s values into ``tensors`` on every process, in one broadcast per dtype."""
    if not _distributed() or not tensors:
        return
    for ts, flat in _flat_groups(tensors):
        dist.broadcast(flat, src)
        _unflatten_(ts, flat)


def rank0_builds(build: Callable[[], T], dump: Callable[[T], object], load: Callable[[object], T],
                 dist_info: DistInfo) -> T:
    """``build()`` on rank 0 only; the others wait for it and get its result (``dump`` to plain data, sent with
    ``broadcast_object_list``, which is the barrier, then ``load``): one measurement, the same on every rank
    (ranks that each timed a measured profile on shared cores would get different tables). An error on rank 0
    is raised on every rank, so none waits for a result that never comes."""
    if not dist_info.enabled:
        return build()
    payload: list[object] = [None]
    error = None
    if dist_info.is_main:
        try:
            payload = [("ok", dump(build()))]
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks were told
            error, payload = e, [("error", f"{type(e).__name__}: {e}")]
    dist.broadcast_object_list(payload, src=0)
    if error is not None:
        raise error
    status, data = payload[0]
    if status != "ok":
        raise RuntimeError(f"rank 0 failed before this rank could continue: {data}")
    return load(data)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))
