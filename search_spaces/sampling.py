"""Random architectures inside a latency band: the baseline every search must beat.

Uniform draws from a space almost never meet a tight budget (on the ``quadra`` space's vpu
table the uniform mean is about 95 ms, and none of 40M uniform draws fell in 26.5-30 ms), so
:func:`sample_in_band` samples *conditioned on latency*:

1. per architecture, a skip probability ``s ~ Uniform(0, 1)``;
2. per layer, the skip op with probability ``s`` (only where the space offers one), else one of
   the layer's non-skip candidates uniformly;
3. keep the draw when its table latency (fixed part + chosen entries) lies in ``[lo_ms, hi_ms]``.

The accepted draws follow that hierarchical distribution restricted to the band: every
placement of blocks and every kernel/expansion choice that fits the band has non-zero
probability, and given the number of blocks, their positions and ops are uniform among those
in the band. It is not uniform over the band's members (the band's many-block corner, when it
has one, is drawn as often as its few-block corner). Duplicates are removed.

With ``layer_probs`` (e.g. a search's learned distribution), a fraction ``mix`` of the draws
instead picks every layer's op from its row of ``layer_probs``; the rest follow the
distribution above, so a peaked distribution that rarely lands in the band still yields
candidates.

Latency enters as plain numbers (one row of candidate latencies in ms per layer), so this
module knows nothing about devices or predictors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search_spaces.blocks import SKIP_OPS


class EmptyBand(ValueError):
    pass


def sample_in_band(candidates: Sequence[Sequence[str]], layer_ms: Sequence[Sequence[float]], fixed_ms: float,
                   lo_ms: float, hi_ms: float, n: int, seed: int = 0, batch: int = 200_000,
                   max_draws: int = 20_000_000, layer_probs: Sequence[Sequence[float]] | None = None,
                   mix: float = 0.5, at_least: int | None = None,
                   also: Sequence[tuple[Sequence[Sequence[float]], float, float]] = ()) -> list[tuple[str, ...]]:
    """``n`` distinct architectures (choice names per layer) whose latency lies in ``[lo_ms, hi_ms]``.

    ``also``: budgets on other devices, each ``(layer_ms, fixed_ms, budget_ms)`` of its table. Then an
    architecture must meet every budget (``hi_ms`` and each ``budget_ms``) and use the binding one: its largest
    latency / budget ratio is at least ``lo_ms / hi_ms``. Deterministic in ``seed``. Raises :class:`EmptyBand`
    naming the space's range when the band is empty or too rare to fill within ``max_draws`` draws; with
    ``at_least``, fewer than ``n`` (but at least that many) are returned instead, for bands with few members.
    """
    if not 0 <= lo_ms <= hi_ms:
        raise ValueError(f"latency band [{lo_ms}, {hi_ms}] ms is not a band; need 0 <= lo <= hi")
    if n < 1:
        raise ValueError(f"n={n}: need at least one architecture")
    ms = [np.asarray(r, dtype=np.float64) for r in layer_ms]
    others = [([np.asarray(r, dtype=np.float64) for r in rows], float(fixed), float(budget))
              for rows, fixed, budget in also]
    if any(len(rows) != len(candidates) or any(len(r) != len(c) for r, c in zip(rows, candidates))
           for rows in [ms, *(o[0] for o in others)]):
        raise ValueError("layer_ms must have one entry per candidate of every layer")
    lo_space = fixed_ms + sum(float(r.min()) for r in ms)
    hi_space = fixed_ms + sum(float(r.max()) for r in ms)
    if hi_ms < lo_space or lo_ms > hi_space:
        raise EmptyBand(f"latency band [{lo_ms:.3f}, {hi_ms:.3f}] ms lies outside the space's range "
                        f"{lo_space:.3f}-{hi_space:.3f} ms")
    if layer_probs is not None:
        cdfs = [np.cumsum(np.asarray(r, dtype=np.float64) / np.sum(r)) for r in layer_probs]
        if len(cdfs) != len(ms) or any(len(c) != len(r) for c, r in zip(cdfs, ms)):
            raise ValueError("layer_probs must have one probability per candidate of every layer")
    rng = np.random.default_rng(seed)
    skip_idx, blocks = _skip_and_blocks(candidates)
    found: dict[tuple[int, ...], None] = {}  # insertion-ordered set
    drawn = 0
    while len(found) < n and drawn < max_draws:
        s = rng.random(batch)
        use_p = rng.random(batch) < mix if layer_probs is not None else None
        picks = np.empty((batch, len(ms)), dtype=np.int64)
        lat = np.full(batch, float(fixed_ms))
        for layer, (row, skip, ops) in enumerate(zip(ms, skip_idx, blocks)):
            choice = _baseline_layer(rng, skip, ops, s)
            if use_p is not None:
                learned = np.minimum(np.searchsorted(cdfs[layer], rng.random(batch)), len(row) - 1)
                choice = np.where(use_p, learned, choice)
            picks[:, layer] = choice
            lat += row[choice]
        keep = (lat >= lo_ms) & (lat <= hi_ms)
        if others:  # every budget met, the binding one used: the largest latency / budget ratio >= lo / hi
            used, keep = lat / hi_ms, lat <= hi_ms
            for rows, fixed, budget in others:
                other = fixed + sum(r[picks[:, layer]] for layer, r in enumerate(rows))
                used, keep = np.maximum(used, other / budget), keep & (other <= budget)
            keep &= used >= lo_ms / hi_ms
        for row in picks[keep]:
            found.setdefault(tuple(int(i) for i in row))
            if len(found) == n:
                break
        drawn += batch
    if len(found) < (n if at_least is None else at_least):
        raise EmptyBand(f"only {len(found)} of {n} architectures found in [{lo_ms:.3f}, {hi_ms:.3f}] ms after "
                        f"{drawn} draws (space range {lo_space:.3f}-{hi_space:.3f} ms); widen the band")
    return [tuple(candidates[layer][i] for layer, i in enumerate(row)) for row in found]


def baseline_latencies(candidates: Sequence[Sequence[str]], layer_ms: Sequence[Sequence[float]], fixed_ms: float,
                       n: int, seed: int = 0) -> np.ndarray:
    """Table latencies of ``n`` architectures drawn from the baseline's distribution (steps 1 and 2 of the
    module docstring) without a band: the latency range the random baseline spans, small to large networks."""
    rng = np.random.default_rng(seed)
    skip_idx, blocks = _skip_and_blocks(candidates)
    s = rng.random(n)
    lat = np.full(n, float(fixed_ms))
    for row, skip, ops in zip(layer_ms, skip_idx, blocks, strict=True):
        lat += np.asarray(row, dtype=np.float64)[_baseline_layer(rng, skip, ops, s)]
    return lat


def _skip_and_blocks(candidates: Sequence[Sequence[str]]) -> tuple[list[int], list[np.ndarray]]:
    """Per layer: the index of its skip op (-1 if none) and the indices of its blocks."""
    skip_idx = [next((i for i, c in enumerate(cs) if c in SKIP_OPS), -1) for cs in candidates]
    return skip_idx, [np.array([i for i, c in enumerate(cs) if c not in SKIP_OPS]) for cs in candidates]


def _baseline_layer(rng: np.random.Generator, skip: int, blocks: np.ndarray, s: np.ndarray) -> np.ndarray:
    """One layer's choice for each draw: the skip op with the draw's probability ``s`` (where the layer has
    one), else one of its blocks uniformly."""
    choice = blocks[rng.integers(0, len(blocks), len(s))]
    if skip >= 0:
        choice = np.where(rng.random(len(s)) < s, skip, choice)
    return choice
