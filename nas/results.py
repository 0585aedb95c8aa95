"""Your own runs in one table and one plot: ``python -m nas.results``.

Joins the rows ``nas.retrain`` (``results_csv``) and ``nas.search`` (``search_csv``) wrote: a trained
network's ``arch_path`` names the search run folder that exported it, so each trained network is shown
with its search's device, target, budget used and derivation. The plot gives test top-1 against the
predicted latency on each device (``latency_<device>_ms``, the deployment shape), one panel per
device, with the Pareto front (no other run is both faster and more accurate) marked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from search_spaces.io import atomic_save_figure

SEARCH_COLUMNS = ("device", "target_ms", "budget_used", "derivation", "seed")  # joined from the search's row


def read_rows(path: Path) -> pd.DataFrame:
    """A results CSV (empty when absent)."""
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame(columns=["run_dir"])
    rows = pd.read_csv(path)
    if "run_dir" not in rows:
        raise ValueError(f"{path} is not a QuadraNAS results CSV (no run_dir column)")
    return rows


def load_runs(results_csv: Path, search_csv: Path) -> pd.DataFrame:
    """One row per trained network, with the columns of the search that exported it (empty for ``model=``)."""
    trained = read_rows(results_csv)
    if trained.empty:
        raise ValueError(f"results_csv={results_csv} holds no trained network yet; retrain a search's export: "
                         "python -m nas.retrain arch=RUN/arch.json")
    arch = trained["arch_path"] if "arch_path" in trained else trained["model"]  # rows of older versions
    trained["search_run"] = [str(Path(a).resolve().parent) if isinstance(a, str) and a.endswith(".json") else None
                             for a in arch]
    searches = read_rows(search_csv)
    if searches.empty:
        return trained
    searches = searches.assign(search_run=[str(Path(d).resolve()) for d in searches.run_dir])
    cols = ["search_run", *(c for c in SEARCH_COLUMNS if c in searches)]
    joined = searches[cols].drop_duplicates("search_run", keep="last")
    return trained.merge(joined.rename(columns={c: f"search_{c}" for c in cols[1:]}), on="search_run", how="left")


def pareto_front(latency_ms: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """Mask of the runs no other run beats on both (at most as slow and more accurate, or faster and as accurate)."""
    lat, acc = np.asarray(latency_ms, float), np.asarray(top1, float)
    dominated = [((lat <= lt) & (acc >= ac) & ((lat < lt) | (acc > ac))).any() for lt, ac in zip(lat, acc)]
    return ~np.array(dominated, dtype=bool)


def table_text(runs: pd.DataFrame) -> str:
    """The table printed: one line per trained network, its search (if any) and its top-1."""
    out = pd.DataFrame({"run": [Path(d).name for d in runs.run_dir], "top1": runs.top1.round(4),
                        "epochs": runs.epochs, "dataset": runs.dataset})
    if "search_device" in runs:
        out["searched_for"] = [f"{d} {t:g} ms" if isinstance(d, str) else "-"
                               for d, t in zip(runs.search_device, runs.search_target_ms)]
        out["budget_used"] = runs.search_budget_used
        out["derivation"] = runs.search_derivation.fillna("-").str.split(":").str[0]
    for col in runs.columns:
        if col.startswith("latency_") and col.endswith("_ms"):
            out[col.removeprefix("latency_")] = runs[col].round(3)
    return out.to_string(index=False)


def plot_runs(runs: pd.DataFrame, devices: list[str], path: Path) -> Path:
    """Top-1 against predicted latency per device, the Pareto front joined by a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    devices = [d for d in devices if f"latency_{d}_ms" in runs]
    if not devices:
        raise ValueError("no latency_<device>_ms column for the devices asked; valid: "
                         + ", ".join(c[8:-3] for c in runs.columns if c.startswith("latency_")))
    fig, axes = plt.subplots(1, len(devices), figsize=(4.2 * len(devices), 3.6), squeeze=False)
    for ax, device in zip(axes[0], devices):
        ok = runs[f"latency_{device}_ms"].notna() & runs.top1.notna()
        lat, acc = runs.loc[ok, f"latency_{device}_ms"].to_numpy(float), runs.loc[ok, "top1"].to_numpy(float)
        front = pareto_front(lat, acc)
        ax.scatter(lat[~front], acc[~front], color="0.6", label="run")
        order = np.argsort(lat[front])
        ax.plot(lat[front][order], acc[front][order], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(f"predicted latency on {device} (ms)")
        ax.set_ylabel("test top-1")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def results(cfg: DictConfig) -> pd.DataFrame:
    runs = load_runs(Path(cfg.results_csv), Path(cfg.search_csv))
    print(table_text(runs))
    if cfg.plot:
        print(f"plot: {plot_runs(runs, list(cfg.devices), Path(cfg.plot))}")
    return runs


@hydra.main(version_base=None, config_path="pkg://conf.tools", config_name="results")
def main(cfg: DictConfig) -> None:
    try:
        results(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
