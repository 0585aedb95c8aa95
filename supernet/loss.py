"""Latency terms of the search loss (all latencies in ms).

* ``mul_log``   loss = a * CE * (log E[LAT] / log T)^b   (ProxylessNAS official, a=0.2, b=0.3)
* ``add_linear`` loss = CE + lam * (E[LAT] - T) / T        (ProxylessNAS official, lam=0.1)
* ``constraint`` loss = CE + w * (E[LAT] - T) / T, a Lagrange multiplier ``w`` on the hard
  budget "the exported architecture's latency <= T". After each architecture step
  ``w += eta * (LAT_export - T) / T``, clamped to [0, w_max], where ``LAT_export`` is the
  table latency of the architecture that would be exported now (the argmax), so the
  pressure grows only while that architecture is over the target and fades once it fits;
  E[LAT] gives the differentiable direction. (A penalty on E[LAT] alone is the wrong
  quantity: in short searches the distribution stays broad, E[LAT] can sit at the target
  while the argmax is far below it, and Adam's normalised steps let any steady latency
  push override the noisy accuracy signal, collapsing every layer to identity.)

``mul_log`` takes logs of latencies in microseconds, so both logs are positive for every
latency above 1 us (in ms the official formula gives NaN once a latency is <= 1 ms, e.g.
on a GPU); E[LAT] is clamped just above 1 us, and a target <= 1 us is an error.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("mul_log", "add_linear", "constraint", "none")


class LatencyLoss(nn.Module):
    def __init__(self, kind: str, target_ms: float, a: float = 0.2, b: float = 0.3, lam: float = 0.1,
                 weight_init: float = 1.0, eta: float = 0.5, weight_max: float = 100.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown latency loss {kind!r}; valid: {', '.join(KINDS)}")
        if not target_ms > 0:
            raise ValueError(f"latency target must be > 0 ms, got {target_ms}")
        if kind == "mul_log" and target_ms * 1e3 <= 1.0:
            raise ValueError(f"mul_log needs a target above 1 us, got {target_ms} ms")
        self.kind, self.target_ms = kind, float(target_ms)
        self.a, self.b, self.lam, self.eta, self.weight_max = a, b, lam, eta, weight_max
        self.register_buffer("weight", torch.tensor(float(weight_init)))

    def forward(self, ce: torch.Tensor, expected_ms: torch.Tensor) -> torch.Tensor:
        t = self.target_ms
        if self.kind == "mul_log":
            log_e = torch.log(torch.clamp(expected_ms * 1e3, min=1.0 + 1e-3))
            return self.a * ce * (log_e / math.log(t * 1e3)) ** self.b
        if self.kind == "add_linear":
            return ce + self.lam * (expected_ms - t) / t
        if self.kind == "constraint":
            return ce + self.weight * (expected_ms - t) / t
        return ce

    @torch.no_grad()
    def update(self, export_ms: float | torch.Tensor) -> None:
        """Adapt the constraint weight from the exported architecture's latency (other kinds: no-op). A tensor
        stays on its device (no host read); the step is rounded to the weight's dtype as a python float is."""
        if self.kind == "constraint":
            e = export_ms if isinstance(export_ms, torch.Tensor) else float(export_ms)
            step = self.eta * (e - self.target_ms) / self.target_ms
            if isinstance(step, torch.Tensor):
                step = step.to(self.weight.dtype)
            self.weight.copy_(torch.clamp(self.weight + step, 0.0, self.weight_max))


class BudgetLoss(nn.Module):
    """The search loss under a latency budget on each of one or more devices: one :class:`LatencyLoss` term per
    budget, applied in turn to the cross-entropy (``constraint`` and ``add_linear`` add one penalty per device,
    each with its own multiplier, so each device's expected latency above its budget is penalised; ``mul_log``
    multiplies one factor per device). One budget is exactly :class:`LatencyLoss`."""

    def __init__(self, kind: str, budgets: dict[str, float], **kwargs):
        super().__init__()
        if not budgets:
            raise ValueError("a search loss needs at least one latency budget")
        self.devices = list(budgets)  # the order of the terms (a device name can clash with a Module attribute)
        self.terms = nn.ModuleList(LatencyLoss(kind, ms, **kwargs) for ms in budgets.values())

    def term(self, device: str) -> LatencyLoss:
        return self.terms[self.devices.index(device)]

    def forward(self, ce: torch.Tensor, expected_ms: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = ce
        for name, term in zip(self.devices, self.terms):
            loss = term(loss, expected_ms[name])
        return loss

    @torch.no_grad()
    def update(self, export_ms: dict[str, float | torch.Tensor]) -> None:
        """Each term's multiplier from the exported architecture's latency on its device."""
        for name, term in zip(self.devices, self.terms):
            term.update(export_ms[name])

    @property
    def weight(self) -> torch.Tensor:
        """The first (searched) device's constraint multiplier."""
        return self.terms[0].weight

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        """Also a checkpoint from before several budgets, which held one term's state at the top level."""
        if state and not any(k.startswith("terms.") for k in state):
            state = {f"terms.0.{k}": v for k, v in state.items()}
        return super().load_state_dict(state, strict, assign)
