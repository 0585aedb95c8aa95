"""Derive an architecture from the logits, guaranteeing a latency budget.

:func:`derive` returns the architecture of highest total log-probability whose LUT latency
(fixed part + chosen candidates) is within the target. Without a target, or when the argmax
fits, this is the argmax. It is found by dynamic programming over layers on the exact
Pareto front of (latency, log-probability) pairs: a partial choice is dropped only when
another is no slower and at least as likely, so the result is the true optimum (fronts
larger than ``max_front`` are thinned by merging points closer than ``budget / max_front``,
never dropping feasibility). A target below the space's minimum is an error naming the
minimum.

With ``min_ms`` the budget must also be *used*: the result is the most likely architecture
whose latency lies in ``[min_ms, target_ms]`` (e.g. ``[0.9 T, T]``). Pareto pruning would drop
the slower-but-less-likely partial choices such a lower bound needs, so that case keeps the
most likely partial choice per latency bucket instead (``max_front`` buckets over the
budget; exact latencies are carried, so the bound is never violated, only the optimum may be
missed by a bucket's width). If nothing lies in the band it falls back to the most likely
architecture within the target, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


class InfeasibleTarget(ValueError):
    pass


def latency_range_ms(layer_ms: Sequence[Sequence[float]], fixed_ms: float) -> tuple[float, float]:
    return (fixed_ms + sum(float(np.min(r)) for r in layer_ms),
            fixed_ms + sum(float(np.max(r)) for r in layer_ms))


def derive(log_probs: Sequence[Sequence[float]], layer_ms: Sequence[Sequence[float]], fixed_ms: float,
           target_ms: float | None = None, max_front: int = 20000, min_ms: float | None = None) -> list[int]:
    """Choice index per layer maximising sum log p subject to min_ms <= fixed + sum LUT <= target."""
    log_probs = [np.asarray(r, dtype=np.float64) for r in log_probs]
    layer_ms = [np.asarray(r, dtype=np.float64) for r in layer_ms]
    argmax = [int(np.argmax(r)) for r in log_probs]
    if target_ms is None:
        return argmax
    lo, hi = latency_range_ms(layer_ms, fixed_ms)
    if target_ms < lo:
        raise InfeasibleTarget(f"latency target {target_ms:.3f} ms is below the space's minimum {lo:.3f} ms "
                               f"(maximum {hi:.3f} ms); choose a target >= {lo:.3f} ms")
    if target_ms > hi:
        warnings.warn(f"latency target {target_ms:.3f} ms is above the space's maximum {hi:.3f} ms: "
                      "it does not constrain the search", stacklevel=2)
    budget = target_ms - fixed_ms
    floor = -np.inf if min_ms is None else min_ms - fixed_ms
    if floor - 1e-12 <= sum(r[i] for r, i in zip(layer_ms, argmax)) <= budget:
        return argmax
    if min_ms is not None:
        picks = _most_likely_in_band(log_probs, layer_ms, floor, budget, max_front)
        if picks is not None:
            return picks
        warnings.warn(f"no architecture lies in [{min_ms:.3f}, {target_ms:.3f}] ms; exporting the most likely "
                      "one within the target", stacklevel=2)
    # front: latency (sorted ascending), log-prob, back-pointers (layer choices as int array)
    lat = np.zeros(1)
    lp = np.zeros(1)
    picks = np.zeros((1, 0), dtype=np.int16)
    min_rest = np.cumsum([r.min() for r in layer_ms][::-1])[::-1].tolist() + [0.0]
    for layer, (lpr, ms) in enumerate(zip(log_probs, layer_ms)):
        lat = (lat[:, None] + ms[None, :]).ravel()
        lp = (lp[:, None] + lpr[None, :]).ravel()
        picks = np.concatenate([np.repeat(picks, len(ms), 0), np.tile(np.arange(len(ms)), len(picks))[:, None]], 1)
        keep = lat + min_rest[layer + 1] <= budget + 1e-12  # can still finish within budget
        lat, lp, picks = lat[keep], lp[keep], picks[keep]
        order = np.lexsort((-lp, lat))  # by latency, then most likely first
        lat, lp, picks = lat[order], lp[order], picks[order]
        pareto = lp > np.concatenate([[-np.inf], np.maximum.accumulate(lp)[:-1]])
        lat, lp, picks = lat[pareto], lp[pareto], picks[pareto]
        if len(lat) > max_front:
            bucket = np.floor(lat / (budget / max_front))
            last_in_bucket = np.concatenate([bucket[1:] != bucket[:-1], [True]])
            lat, lp, picks = lat[last_in_bucket], lp[last_in_bucket], picks[last_in_bucket]
    best = int(np.argmax(lp))  # every point left is feasible
    return picks[best].astype(int).tolist()


def _most_likely_in_band(log_probs: list[np.ndarray], layer_ms: list[np.ndarray], floor: float, budget: float,
                         buckets: int) -> list[int] | None:
    """Most likely choices with layer latencies summing into [floor, budget]; None if none found."""
    lat, lp = np.zeros(1), np.zeros(1)
    picks = np.zeros((1, 0), dtype=np.int16)
    min_rest = np.cumsum([r.min() for r in layer_ms][::-1])[::-1].tolist() + [0.0]
    max_rest = np.cumsum([r.max() for r in layer_ms][::-1])[::-1].tolist() + [0.0]
    width = max(budget, 1e-9) / buckets
    for layer, (lpr, ms) in enumerate(zip(log_probs, layer_ms)):
        lat = (lat[:, None] + ms[None, :]).ravel()
        lp = (lp[:, None] + lpr[None, :]).ravel()
        picks = np.concatenate([np.repeat(picks, len(ms), 0), np.tile(np.arange(len(ms)), len(picks))[:, None]], 1)
        keep = (lat + min_rest[layer + 1] <= budget + 1e-12) & (lat + max_rest[layer + 1] >= floor - 1e-12)
        lat, lp, picks = lat[keep], lp[keep], picks[keep]
        if not len(lat):
            return None
        order = np.lexsort((-lp, np.floor(lat / width)))  # by bucket, most likely first
        lat, lp, picks = lat[order], lp[order], picks[order]
        bucket = np.floor(lat / width)
        first = np.concatenate([[True], bucket[1:] != bucket[:-1]])
        lat, lp, picks = lat[first], lp[first], picks[first]
    ok = (lat >= floor - 1e-12) & (lat <= budget + 1e-12)
    if not ok.any():
        return None
    best = np.flatnonzero(ok)[int(np.argmax(lp[ok]))]
    return picks[best].astype(int).tolist()
