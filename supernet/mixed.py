"""Mixed layer: all candidates of one searchable layer plus their architecture logits.

Binary gates (ProxylessNAS). Each step samples paths from ``p = softmax(alpha)``:

* weight step: one path, run alone, ordinary autograd; ``alpha`` gets no gradient. The path is
  drawn from ``p`` (``sampling="proxyless"``, the paper's) or uniformly (``sampling="uniform"``,
  FairNAS/SPOS-style: every candidate trains equally often whatever ``alpha`` prefers).
* arch step, mode ``two`` (the paper's): two paths without replacement; the gate is
  drawn from ``p`` renormalised over the pair; only the active path runs forward.
* arch step, mode ``full_v2`` (the official script's default): one path from ``p``;
  every candidate counts in the gradient.
* arch step, mode ``full``: every candidate runs with autograd (DARTS-like memory;
  reference only).

Gradient. The gates ``g`` are one-hot in value but carry the softmax Jacobian
(``g = q + (onehot - q).detach()`` with ``q`` the softmax over the involved paths), so
autograd gives exactly ``dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i)``.
``dL/dg_k = <out_k, dL/dy>``: in ``two``/``full_v2`` it is computed in backward by
:class:`_GatedActivePath`, which re-runs the inactive candidates without grad and reuses
the active output, so an architecture step saves no more than a standalone forward.

Identity (ProxylessNAS "zero") is an ordinary candidate whose output is its input.
The official code skips the whole block when the zero op is drawn, which leaves that
layer's architecture gradient undefined (``None``; its handling changed between torch
versions). Here ``dL/dg_identity = <x, dL/dy>`` is computed like any other, so every
layer gets an update every step. This equals the official formulation whenever the
latter is defined: candidate outputs here are ``x + f(x)`` where there they are ``f(x)``,
and the formula above is unchanged by adding the same ``<x, dL/dy>`` to every ``dL/dg_j``
(``sum_j q_j (delta_ij - q_i) = 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("two", "full_v2", "full")
SAMPLINGS = ("proxyless", "uniform")  # how weight steps draw their path


def host_ints(t: torch.Tensor) -> list[int]:
    """The values of a tensor that lives on the host (a draw from a CPU generator). ``.numpy()`` fails on a
    device tensor, so this can never wait for a GPU (and host-read counters leave it out)."""
    return t.numpy().tolist()


def _alpha_key(alpha: torch.Tensor) -> tuple[int, int]:
    """Changes whenever the logits do: in-place updates (optimizer steps, rescale, load_state_dict) bump the
    version counter, a new tensor has a new address."""
    return alpha.data_ptr(), alpha._version


def prefetch_host(layers: Sequence[MixedOp]) -> bool:
    """Copy the logits and probabilities of every layer whose host copy is stale to the host in ONE read (on a
    GPU one sync per architecture update instead of one per layer per step); returns whether all are finite."""
    stale = [m for m in layers if not m.host_fresh()]
    if stale:
        flat = torch.cat([torch.cat([m.alpha.detach(), F.softmax(m.alpha.detach(), dim=0)]) for m in stale]).cpu()
        for m, part in zip(stale, flat.split([2 * len(m.candidates) for m in stale]), strict=True):
            m.set_host(part)
    return all(bool(torch.isfinite(m.host_arch()[1]).all().numpy()) for m in layers)


@dataclass(frozen=True)
class Sample:
    """The paths one step uses: ``active`` runs forward; ``involved`` enter the gradient."""

    active: int
    involved: tuple[int, ...]
    gates: torch.Tensor | None  # None in weight steps
    mode: str = "two"
    alpha_before: torch.Tensor | None = None  # `two`: the pair's logits when drawn (for rescale)


class _GatedActivePath(torch.autograd.Function):
    """y = out_active(x); in backward also dL/dg_k = <out_k(x), dL/dy> for the involved k."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor, layer: MixedOp, sample: Sample):
        xd = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            out = layer.candidates[sample.active](xd)
        y = out.detach()
        ctx.save_for_backward(x, y)
        ctx.graph = (xd, out)  # the active path's graph; `out` shares storage with the saved y
        ctx.layer, ctx.sample, ctx.gates_dtype = layer, sample, gates.dtype
        kind = x.device.type  # backward runs outside the caller's autocast: recompute the paths under the same one
        ctx.autocast = (kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, y = ctx.saved_tensors
        xd, out = ctx.graph
        grad_x = None
        if ctx.needs_input_grad[0]:
            # grads for x only: an architecture step never touches the weights' .grad
            (grad_x,) = torch.autograd.grad(out, xd, grad_y) if out.requires_grad else (None,)
        grad_g = torch.zeros(len(ctx.layer.candidates), dtype=ctx.gates_dtype, device=grad_y.device)
        kind, enabled, dtype = ctx.autocast
        with torch.no_grad(), torch.autocast(kind, dtype=dtype, enabled=enabled):
            for k in ctx.sample.involved:
                out_k = y if k == ctx.sample.active else ctx.layer.candidates[k](x)
                grad_g[k] = torch.sum(out_k.to(grad_g.dtype) * grad_y.to(grad_g.dtype))
        return grad_x, grad_g, None, None


class MixedOp(nn.Module):
    """Candidates of one layer, logits ``alpha`` and the current sample."""

    def __init__(self, candidates: list[nn.Module], names: list[str]):
        super().__init__()
        if len(candidates) != len(names) or not candidates:
            raise ValueError("MixedOp needs one name per candidate and at least one candidate")
        self.candidates = nn.ModuleList(candidates)
        self.names = tuple(names)
        self.alpha = nn.Parameter(torch.randn(len(candidates)) * 1e-3)  # N(0, 1e-3), as the paper
        self.sample: Sample | None = None
        self._host: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None  # key, alpha, p on the host

    def host_fresh(self) -> bool:
        return self._host is not None and self._host[0] == _alpha_key(self.alpha)

    def set_host(self, alpha_and_p: torch.Tensor) -> None:
        """Store a host copy of ``cat([alpha, softmax(alpha)])`` taken from the current logits."""
        n = len(self.candidates)
        self._host = (_alpha_key(self.alpha), alpha_and_p[:n], alpha_and_p[n:])

    def host_arch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and probabilities on the host, read once per change of the logits (see prefetch_host)."""
        if not self.host_fresh():
            a = self.alpha.detach()
            self.set_host(torch.cat([a, F.softmax(a, dim=0)]).cpu())
        return self._host[1], self._host[2]

    def probs(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=0)

    def resample(self, kind: str, mode: str, generator: torch.Generator | None = None,
                 sampling: str = "proxyless") -> Sample:
        """Draw this step's paths. ``kind`` is ``weight`` or ``arch``; ``mode`` one of MODES;
        ``sampling`` (weight steps) one of SAMPLINGS."""
        if mode not in MODES:
            raise ValueError(f"unknown binary-gate mode {mode!r}; valid: {', '.join(MODES)}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown weight sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
        n = len(self.candidates)
        # draws on the CPU generator, whatever device the logits are on, from a host copy read once per update
        if kind == "weight" and sampling == "uniform" or n == 1:
            p = torch.full((n,), 1.0 / n, dtype=self.alpha.dtype)
        else:
            alpha_host, p = self.host_arch()
        if kind == "weight" or n == 1:
            active = host_ints(torch.multinomial(p, 1, generator=generator))[0]
            self.sample = Sample(active, (active,), None)
            return self.sample
        if kind != "arch":
            raise ValueError(f"unknown step kind {kind!r}; valid: weight, arch")
        if mode == "two":
            pair = host_ints(torch.multinomial(p, 2, replacement=False, generator=generator))
            q = F.softmax(self.alpha[pair], dim=0)
            c = host_ints(torch.multinomial(F.softmax(alpha_host[pair], dim=0), 1, generator=generator))[0]
            onehot = torch.zeros_like(q)
            onehot[c] = 1.0
            gates = torch.zeros_like(self.alpha).index_put((torch.tensor(pair, device=q.device),),
                                                           q + (onehot - q).detach())
            self.sample = Sample(pair[c], tuple(pair), gates, mode, self.alpha.detach()[pair].clone())
        else:
            q = self.probs()
            active = host_ints(torch.multinomial(p, 1, generator=generator))[0]
            gates = q + (F.one_hot(torch.tensor(active), n).to(q) - q).detach()
            self.sample = Sample(active, tuple(range(n)), gates, mode)
        return self.sample

    @torch.no_grad()
    def rescale(self) -> None:
        """After an arch update in ``two`` mode: shift the pair's logits so that the paths
        outside the pair keep their probability (ProxylessNAS)."""
        s = self.sample
        if s is None or s.alpha_before is None:
            return
        pair = list(s.involved)
        offset = torch.logsumexp(self.alpha[pair], 0) - torch.logsumexp(s.alpha_before, 0)
        self.alpha[pair] -= offset

    def pin(self, index: int) -> None:
        """Fix the path (weight-step style), e.g. to compare with a standalone network."""
        self.sample = Sample(index, (index,), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sample
        if s is None:
            raise RuntimeError("MixedOp has no sample: call resample() (or pin()) before forward")
        if s.gates is None:
            return self.candidates[s.active](x)
        if s.mode == "full":
            return sum(s.gates[k] * self.candidates[k](x) for k in s.involved)
        return _GatedActivePath.apply(x, s.gates, self, s)

    def export(self) -> str:
        """The most likely candidate (argmax, never a sample)."""
        return self.names[int(torch.argmax(self.alpha))]

    def extra_repr(self) -> str:
        return f"candidates={list(self.names)}"
