"""How much of a benchmark's spread is retrain noise? ``python -m experiments.diagnostics.retrain_noise``.

The same architectures of one (device, target) band are retrained with several seeds and one
recipe (the :mod:`experiments.search_vs_random` recipe and run folders, so finished retrains are
shared and nothing runs twice):

* the benchmark's ``--k`` random draws in ``[0.9T, T]`` (the same draws, same files);
* the exports of a search variant of that benchmark (``--variant``, its ``--search-seeds``), when
  they exist; they are never searched here.

Prints per architecture the top-1 mean +- std over ``--seeds``, then

* the pooled within-architecture std (retrain noise: one architecture, other seeds);
* the std of the architectures' seed means (what separates architectures, plus noise / n);
* the random draws' mean with each architecture's seeds averaged, beside the mean of the one
  retrain per architecture the benchmark uses (seed 0 for a draw, seed s for the export of search
  seed s), and the same for the searched exports;
* what the band allows any selector (:func:`variance_components`, :func:`best_of_gain`), from the
  random draws only (the exports are not a random sample of the band): the spread of the
  architectures' true top-1 with the seed noise taken out, the gain over the band's mean of an
  oracle that knows every candidate's true top-1 and keeps the best of N, the same for a selector that
  retrains every candidate once (the benchmark's own recipe as the score), the Kendall tau between two
  retrain seeds (observed, and under the model: how well any in-band score can rank against one
  retrain), and the standard error of the benchmark's delta (searched mean of S seeds minus the mean
  of K draws, one retrain each).
  These assume normal spreads; one bad architecture in the band (a long low tail) breaks that.

Writes ``retrain_noise_<dataset>_<variant>_<device>-<target>.csv``/``.md`` into ``--out``. Resumable: rerun
the same command; ``--report-only`` only reads finished retrains.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import numpy as np
import pandas as pd
from scipy import integrate, stats

from experiments.markdown import md_table, report
from experiments.ranking import tau
from experiments.search_vs_random import add_run_args, parse_grid, parse_seeds, random_archs, retrain_all
from search_spaces.arch import Arch

ORACLE_CANDIDATES = (5, 10, 33, 129)  # K draws; K=10; derive.candidates 32 (+1 budgeted); 128 (+1)


def noise_stats(rows: pd.DataFrame) -> dict[str, float]:
    """Pooled within-architecture std and the std of the per-architecture means (top-1, fractions)."""
    groups = [g.top1.to_numpy() for _, g in rows.groupby("arch")]
    dof = sum(len(g) - 1 for g in groups)
    within = float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)) if dof else float("nan")
    means = np.array([g.mean() for g in groups])
    between = float(means.std(ddof=1)) if len(means) > 1 else float("nan")
    return {"within_arch_std": within, "between_arch_means_std": between, "n_archs": len(groups),
            "n_retrains": int(sum(len(g) for g in groups))}


def variance_components(rows: pd.DataFrame, level: float = 0.9) -> dict[str, float]:
    """Seed std and architecture std of top-1 under the one-way random-effects model
    ``top1 = mu + a_arch + e_seed``: the seed variance is the pooled within-architecture variance, the
    architecture variance is the variance of the seed means less the seed variance each mean still
    carries (``mean(1/n_i)`` of it), clipped at 0. ``sigma_a_lo``/``sigma_a_hi``: a ``level`` interval
    from the chi-square interval of the variance of the means (the seed variance taken as known). NaN
    where the rows cannot tell (no repeated seed, fewer than two architectures)."""
    n = noise_stats(rows)
    var_e, var_means, m = n["within_arch_std"] ** 2, n["between_arch_means_std"] ** 2, n["n_archs"]
    if np.isnan(var_e) or np.isnan(var_means):
        return dict.fromkeys(("sigma_e", "sigma_a", "sigma_a_lo", "sigma_a_hi"), float("nan"))
    noise_in_means = var_e * float(np.mean(1 / rows.groupby("arch").size()))

    def sigma_a(var: float) -> float:
        return float(np.sqrt(max(0.0, var - noise_in_means)))

    tail = (1 - level) / 2
    return {"sigma_e": float(np.sqrt(var_e)), "sigma_a": sigma_a(var_means),
            "sigma_a_lo": sigma_a((m - 1) * var_means / stats.chi2.ppf(1 - tail, m - 1)),
            "sigma_a_hi": sigma_a((m - 1) * var_means / stats.chi2.ppf(tail, m - 1))}


def best_of_gain(sigma: float, n: int, noise: float = 0.0) -> float:
    """Expected excess over the mean of the best of ``n`` independent normal draws of std ``sigma``, when
    each is picked by its value plus independent normal noise of std ``noise`` (a score that measures the
    true value only noisily): ``sigma**2 / sqrt(sigma**2 + noise**2) * E[max of n standard normals]``, the
    regression of the true value on the score. ``noise=0`` is the oracle, ``sigma * E[max]`` (0 for one
    draw, ``sigma / sqrt(pi)`` for two)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if sigma == 0.0:
        return 0.0
    e_max, _ = integrate.quad(lambda z: z * n * stats.norm.pdf(z) * stats.norm.cdf(z) ** (n - 1), -np.inf, np.inf)
    return sigma ** 2 / float(np.hypot(sigma, noise)) * e_max


def normal_tau(rho: float) -> float:
    """Kendall tau of two jointly normal variables with correlation ``rho``: ``2 / pi * arcsin(rho)``."""
    return float(2 / np.pi * np.arcsin(rho))


def seed_tau(rows: pd.DataFrame, seeds: tuple[int, int] = (0, 1), score: str = "top1",
             key: str = "arch") -> tuple[float, int]:
    """Kendall tau between retrain seed ``seeds[0]``'s ``score`` (its top-1 by default) and seed ``seeds[1]``'s
    top-1 over the architectures (column ``key``) retrained with both, and their number
    (:func:`experiments.ranking.tau`: NaN under three): how well one retrain ranks the band against
    another (an oracle score does better, see :func:`normal_tau`)."""
    first = rows[rows.seed == seeds[0]].groupby(key)[score].mean()
    second = rows[rows.seed == seeds[1]].groupby(key).top1.mean()
    both = first.index.intersection(second.index)
    return tau(first[both], second[both]), len(both)


def ceiling_lines(rows: pd.DataFrame, k: int, search_seeds: int, candidates: tuple[int, ...]) -> list[str]:
    """The report's lines on what the band allows a selector (random draws' rows only)."""
    random = rows[rows.kind == "random"]
    v = variance_components(random)
    if np.isnan(v["sigma_a"]):
        return ["- what the band allows a selector: needs two or more random draws with repeated seeds"]
    sigma_e, sigma_a = v["sigma_e"], v["sigma_a"]
    n_draws = random.arch.nunique()
    se = np.sqrt(sigma_e ** 2 / search_seeds + (sigma_a ** 2 + sigma_e ** 2) / k)

    def gains(noise: float) -> str:
        return ", ".join(f"best of {n}: +{100 * best_of_gain(sigma_a, n, noise):.2f} pt "
                         f"({100 * best_of_gain(v['sigma_a_hi'], n, noise):.2f})" for n in candidates)

    rho = sigma_a ** 2 / (sigma_a ** 2 + sigma_e ** 2)  # corr of two retrains of one architecture
    seeds_tau, n_both = seed_tau(random)
    return [f"- random draws, seed noise taken out (random-effects model, {n_draws} draws): architecture std "
            f"**{100 * sigma_a:.2f} pt** (90% interval {100 * v['sigma_a_lo']:.2f}-{100 * v['sigma_a_hi']:.2f}), "
            f"seed std {100 * sigma_e:.2f} pt",
            f"- an oracle that knows every candidate's true top-1 gains over the band's mean: {gains(0.0)} (normal "
            f"spread; at the point estimate, in brackets at the interval's upper end)",
            f"- a selector that retrains every candidate once with this recipe and keeps the best gains: "
            f"{gains(sigma_e)}",
            f"- Kendall tau of two retrain seeds over the draws: {seeds_tau:.3f} ({n_both} draws); under the model, "
            f"{normal_tau(rho):.3f} between two retrains and {normal_tau(np.sqrt(rho)):.3f} for an oracle score "
            f"against one retrain",
            f"- standard error of the benchmark's delta ({search_seeds} search seeds vs {k} draws, one retrain each): "
            f"{100 * se:.2f} pt"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--point", default="vpu:30ms", help="device:target of the band [0.9T, T]")
    p.add_argument("--k", type=int, default=5, help="random draws (the benchmark's)")
    p.add_argument("--seeds", default="0,1,2", help="retrain seeds of every architecture")
    p.add_argument("--variant", default="band_select", help="search variant whose exports are added ('' for none)")
    p.add_argument("--search-seeds", default="0,1,2", help="that variant's search seeds")
    add_run_args(p, "statistics of finished retrains; run nothing")
    a = p.parse_args(argv)
    (point,) = parse_grid(a.point)
    seeds = parse_seeds(a.seeds)
    recipe = shlex.split(a.recipe)
    archs = [("random", i, path) for i, path in
             enumerate(random_archs(point, a.k, a.dataset, a.root / "random" / a.dataset / point.tag))]
    if a.variant:
        for s in parse_seeds(a.search_seeds):
            path = a.root / "search" / a.dataset / a.variant / point.tag / f"seed{s}" / "arch.json"
            if path.exists():
                archs.append(("searched", s, path))
            else:
                print(f"note: {path} does not exist (not searched here); skipped", file=sys.stderr)
    jobs = [(kind, idx, path, seed) for kind, idx, path in archs for seed in seeds]
    results = retrain_all([(path, seed) for *_, path, seed in jobs], recipe, a)
    names = {path: " ".join(c.replace("quadra_", "") for c in Arch.load(path).choices) for _, _, path in archs}
    rows = pd.DataFrame([{"kind": kind, "index": idx, "seed": seed, "top1": res["top1"], "arch": names[path],
                          "latency_ms": res["latency_ms"][point.device]["ms"]}
                         for (kind, idx, path, seed), res in zip(jobs, results) if res is not None])
    if rows.empty:
        print("no finished retrains yet", file=sys.stderr)
        return 1
    # the benchmark retrains a random draw with seed 0 and the export of search seed s with seed s
    rows["benchmark_seed"] = rows.seed == np.where(rows.kind == "random", 0, rows["index"])
    per_arch = (rows.groupby(["kind", "index", "arch"], sort=False)
                .agg(latency_ms=("latency_ms", "first"), mean=("top1", "mean"), std=("top1", "std"),
                     n=("top1", "size"))
                .reset_index())
    bench = rows[rows.benchmark_seed].set_index(["kind", "index"]).top1
    per_arch["benchmark_top1"] = [bench.get((k, i), np.nan) for k, i in zip(per_arch.kind, per_arch["index"])]
    stats = noise_stats(rows)
    lines = [f"# Retrain noise at {point.device} {point.target} ([0.9T, T])\n",
             f"Recipe: `{a.recipe}`, retrain seeds {a.seeds}; the benchmark's {a.k} random draws"
             + (f" and the `{a.variant}` exports" if a.variant else "") + ".\n",
             f"- retrain noise (pooled std of one architecture over seeds): **{100 * stats['within_arch_std']:.2f} pt**"
             f" ({stats['n_retrains']} retrains of {stats['n_archs']} architectures)",
             f"- std of the architectures' seed means: {100 * stats['between_arch_means_std']:.2f} pt"]
    for kind, g in per_arch.groupby("kind", sort=False):
        lines.append(f"- {kind}: mean over all seeds {g['mean'].mean():.4f}; the benchmark's one retrain each "
                     f"{g.benchmark_top1.mean():.4f} ({len(g)} architectures)")
    lines += ceiling_lines(rows, a.k, len(parse_seeds(a.search_seeds)), ORACLE_CANDIDATES)
    lines += ["", md_table(per_arch[["kind", "index", "latency_ms", "benchmark_top1", "mean", "std", "n", "arch"]])]
    report(a.out / "_".join(filter(None, ["retrain_noise", a.dataset, a.variant, point.tag])), rows, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
