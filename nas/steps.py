"""The steps of a supernet search, shared by ``nas.search`` and the experiments.

* :func:`lut_tensors`: a latency table as one tensor of candidate latencies (ms) per layer.
* :func:`weight_step`: one optimizer step of the weights on the paths sampled now.
* :func:`arch_step`: one optimizer step of the architecture logits on the paths sampled now
  (binary gates), the weights' ``.grad`` untouched.
* :func:`export_ms`: table latency of the argmax architecture (:func:`export_ms_tensor`: the same on the
  device, without a host read).

No step reads a value back to the host at ``precision=32`` (a GPU would wait for it): losses come back
as device tensors and the caller decides when to look at them.

Sampling stays with the caller (``model.resample(...)`` or ``model.pin(...)``), so a benchmark
can force a path and time exactly the same step the search takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from nas.accelerator import Accelerator
from nas.loops import all_reduce_mean_, broadcast_
from supernet.loss import BudgetLoss
from supernet.supernet import Supernet


def lut_tensors(ops: Sequence[Sequence[str]], layer_ms: Sequence[Sequence[float]],
                model: Supernet) -> list[torch.Tensor]:
    """One float tensor per searchable layer, checked against the supernet's candidates."""
    for names, m in zip(ops, model.mixed_ops(), strict=True):
        if tuple(names) != m.names:
            raise RuntimeError(f"latency table candidates {tuple(names)} do not match the supernet's {m.names}")
    return [torch.tensor(ms, dtype=torch.float32) for ms in layer_ms]


def weight_step(model: Supernet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None, label_smoothing: float = 0.0,
                grad_clip: float | None = None, accel: Accelerator | None = None,
                reduce: Callable[[list[torch.Tensor]], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy step of the weights; returns (loss, logits), both detached.

    ``forward`` is the module to call (default ``model``); ``accel`` gives the precision (autocast, and the
    gradient scaler at ``precision=16``; default float32). ``reduce`` averages the gradients across processes
    in place (DDP): it gets only the gradients this step made, i.e. the sampled path's. The caller checks the
    loss for finiteness before trusting the step (see ``nas.search``)."""
    accel = accel or Accelerator(x.device)
    with accel.autocast():
        logits = (forward or model)(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    accel.backward(loss, optimizer, model.weight_parameters(), grad_clip, reduce)
    accel.apply(optimizer)
    return loss.detach(), logits.detach()


class PathSync:
    """Data-parallel training of a supernet without a DDP wrapper: a weight step trains one path, and a DDP
    wrapper would all-reduce every bucket of the whole supernet (zeros for the candidates that did not run,
    ``find_unused_parameters`` walking the graph). Here each weight step all-reduces only the gradients its
    backward made, flattened in one call (:meth:`reduce`, given to :func:`weight_step`), and broadcasts rank
    0's buffers of the sampled path before its forward (what DDP's ``broadcast_buffers`` does; the quadra
    space has none). Every rank samples the same path: the path generator is seeded alike on every rank."""

    def __init__(self, model: Supernet) -> None:
        self.model = model
        broadcast_(list(model.state_dict().values()))  # start from rank 0's weights, as DDP does

    def before_forward(self) -> None:
        broadcast_(active_buffers(self.model))

    @staticmethod
    def reduce(grads: list[torch.Tensor]) -> None:
        all_reduce_mean_(grads)


def active_buffers(model: Supernet) -> list[torch.Tensor]:
    """The buffers the pinned path uses: every buffer outside the candidates that are not sampled now."""
    idle = {id(b) for m in model.mixed_ops() for k, c in enumerate(m.candidates)
            if m.sample is not None and k != m.sample.active for b in c.buffers()}
    return [b for b in model.buffers() if id(b) not in idle]


def arch_step(model: Supernet, optimizer: torch.optim.Optimizer, loss_fn: BudgetLoss, x: torch.Tensor,
              y: torch.Tensor, luts: Mapping[str, tuple[Sequence[torch.Tensor], float]],
              reduce: Callable[[list[torch.Tensor]], None] | None = None,
              accel: Accelerator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latency-aware step of the logits on held-out data; returns (loss, cross-entropy), detached. ``luts`` maps
    each budget's device to its per-layer tables and fixed part: every budget's expected latency enters the loss.

    ``reduce`` averages the gradients across processes (DDP) in place. After the step, ``two``
    mode's rescaling keeps the probability of the paths outside each sampled pair. The forward runs in
    ``accel``'s precision, the latency term in float32; at ``precision=16`` the gradients are taken of the
    loss times the weight steps' current loss scale, and a step whose gradients overflowed is skipped."""
    accel = accel or Accelerator(x.device)
    params = model.arch_parameters()
    with accel.autocast():
        ce = F.cross_entropy(model(x), y)
    loss = loss_fn(ce.float(), {name: model.expected_latency_ms(*luts[name]) for name in loss_fn.devices})
    scale = _loss_scale(accel)
    grads = list(torch.autograd.grad(loss * scale if scale is not None else loss, params))  # weights' .grad untouched
    if reduce is not None:
        reduce(grads)
    if scale is not None:
        grads = [g / scale for g in grads]
        if not bool(torch.isfinite(torch.cat([g.reshape(-1) for g in grads])).all()):  # one read, not one a layer
            return loss.detach(), ce.detach()
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    model.rescale()
    return loss.detach(), ce.detach()


def _loss_scale(accel: Accelerator) -> torch.Tensor | None:
    """The weight steps' current loss scale as a device tensor (None unless ``precision=16``): no host read."""
    if not accel.overflow_expected:
        return None
    scale = accel.scaler._get_scale_async()
    return scale if scale is not None else torch.tensor(accel.scaler.get_scale(), device=accel.device)


def export_ms(model: Supernet, lut: Sequence[torch.Tensor], fixed_ms: float) -> float:
    """Table latency of the argmax architecture (what a plain argmax export would give now); one host read."""
    return float(export_ms_tensor(model, lut, fixed_ms).cpu().numpy())


def export_ms_tensor(model: Supernet, lut: Sequence[torch.Tensor], fixed_ms: float) -> torch.Tensor:
    """:func:`export_ms` as a float64 tensor on the tables' device (no host read). On the CPU the sum runs
    layer by layer in float64, as the python sum of the per-layer entries did."""
    picked = torch.cat([t.index_select(0, m.alpha.detach().argmax().view(1))
                        for m, t in zip(model.mixed_ops(), lut, strict=True)])
    return fixed_ms + torch.cumsum(picked.double(), 0)[-1]
