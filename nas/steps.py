"""The steps of a supernet search, shared by ``nas.search`` and the experiments.

* :func:`lut_tensors`: a latency table as one tensor of candidate latencies (ms) per layer.
* :func:`weight_step`: one optimizer step of the weights on the paths sampled now.
* :func:`arch_step`: one optimizer step of the architecture logits on the paths sampled now
  (binary gates), the weights' ``.grad`` untouched.
* :func:`export_ms`: table latency of the argmax architecture.

Sampling stays with the caller (``model.resample(...)`` or ``model.pin(...)``), so a benchmark
can force a path and time exactly the same step the search takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from nas.accelerator import Accelerator
from supernet.loss import LatencyLoss
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
                grad_clip: float | None = None, accel: Accelerator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy step of the weights; returns (loss, logits), both detached.

    ``forward`` is the module to call (e.g. the DDP wrapper of ``model``); ``accel`` gives the precision
    (autocast, and the gradient scaler at ``precision=16``; default float32). The caller checks the
    loss for finiteness before trusting the step (see ``nas.search``)."""
    accel = accel or Accelerator(x.device)
    with accel.autocast():
        logits = (forward or model)(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    accel.backward(loss, optimizer, model.weight_parameters(), grad_clip)
    accel.apply(optimizer)
    return loss.detach(), logits.detach()


def arch_step(model: Supernet, optimizer: torch.optim.Optimizer, loss_fn: LatencyLoss, x: torch.Tensor,
              y: torch.Tensor, lut: Sequence[torch.Tensor], fixed_ms: float,
              reduce: Callable[[list[torch.Tensor]], None] | None = None,
              accel: Accelerator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Latency-aware step of the logits on held-out data; returns (loss, cross-entropy), detached.

    ``reduce`` averages the gradients across processes (DDP) in place. After the step, ``two``
    mode's rescaling keeps the probability of the paths outside each sampled pair. The forward runs in
    ``accel``'s precision, the latency term in float32; at ``precision=16`` the gradients are taken of the
    loss times the weight steps' current loss scale, and a step whose gradients overflowed is skipped."""
    accel = accel or Accelerator(x.device)
    params = model.arch_parameters()
    with accel.autocast():
        ce = F.cross_entropy(model(x), y)
    loss = loss_fn(ce.float(), model.expected_latency_ms(lut, fixed_ms))
    scale = float(accel.scaler.get_scale()) if accel.overflow_expected else 1.0
    grads = list(torch.autograd.grad(loss * scale if scale != 1.0 else loss, params))  # weights' .grad untouched
    if reduce is not None:
        reduce(grads)
    if scale != 1.0:
        grads = [g / scale for g in grads]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            return loss.detach(), ce.detach()
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    model.rescale()
    return loss.detach(), ce.detach()


def export_ms(model: Supernet, lut: Sequence[torch.Tensor], fixed_ms: float) -> float:
    """Table latency of the argmax architecture (what a plain argmax export would give now)."""
    return fixed_ms + sum(float(t[int(m.alpha.argmax())]) for m, t in zip(model.mixed_ops(), lut))
