"""Derive from a finished search's trained supernet for any device and target: ``python -m nas.derive``.

    python -m nas.derive supernet=outputs/search/vpu-30ms/T device=cpu latency=20ms
    python -m nas.derive supernet=RUN device=gpu latency=1ms derive.method=train

The supernet is not trained further: one search serves every device and budget. Only the latency tables of the
devices named are built (and cached), so a device the supernet was never searched for works. The options are a
search's that do not train (``conf/derive.yaml``); what trained the supernet (:data:`SUPERNET_KEYS`) is read
from its checkpoint, and giving another value for it is an error. The run folder
(``outputs/derive/<device>-<latency>/<time>``) gets ``arch.json``, whose ``supernet`` block names the source
run, the target it was searched for and its training recipe, ``history.csv`` (the supernet's),
``probabilities.png`` and a row in ``results_csv``. Rerunning a finished derivation prints its summary and
rewrites nothing. Exit codes as ``nas.search``.

    python -m nas.derive supernet=RUN front.devices=[vpu,cpu] [front.targets=6]

derives a front instead: ``front.targets`` targets per device (:func:`ladder_ms`), each derived with
``derive.*``, written to ``front.csv`` (target, table latency, budget used, held-out top-1 with the supernet's
weights, choices) and ``front.png``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from nas import accelerator
from nas.checkpoint import CHECKPOINT, check_resume_config, load_checkpoint
from nas.cli import hydra_run_dir, run_cli
from nas.config import ConfigError, check_config
from nas.data import make_loader
from nas.derivations import derive_choices, ladder_ms
from nas.loops import evaluate, init_distributed, set_threads, shard
from nas.options import show_help_if_asked
from nas.runlock import run_folder
from nas.search import Setup, State, build_state, export, prepare, search_summary_text
from search_spaces.arch import Arch
from search_spaces.io import atomic_save_figure, atomic_write_text

log = logging.getLogger("nas.derive")

# What trained the supernet: read from its checkpoint, never from the command line.
SUPERNET_KEYS = ("dataset", "search_space", "seed", "mode", "train", "arch", "loss", "quad_impl")
OWN_KEYS = ("supernet", "front", "hydra")  # keys of conf/derive.yaml that are not a search's


def derivation_config(cfg: DictConfig, saved: dict) -> DictConfig:
    """The search config a derivation runs under: the supernet's training keys (:data:`SUPERNET_KEYS`) from
    ``saved`` (its checkpoint's config), every other key from ``cfg``."""
    ours = OmegaConf.to_container(cfg, resolve=True)
    merged = {k: v for k, v in ours.items() if k not in OWN_KEYS and k not in SUPERNET_KEYS}
    merged.update({k: saved[k] for k in SUPERNET_KEYS if k in saved})
    return OmegaConf.create(merged)


def check_given(given: Iterable[str], cfg: DictConfig, saved: dict, source: Path) -> None:
    """Command-line overrides (``given``, Hydra's ``key=value`` strings) may not change what trained the
    supernet: a value that differs from the checkpoint's is a one-line error naming both."""
    for override in given:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0] not in SUPERNET_KEYS:
            continue
        group = key in ("dataset", "search_space")  # a group option: compare its name
        path = f"{key}.name" if group else key
        ours = OmegaConf.select(cfg, path)
        theirs = OmegaConf.select(OmegaConf.create(saved), path)
        if ours != theirs:
            raise ConfigError(f"{key}={ours} is invalid: the supernet in {source} was trained with {key}={theirs}; "
                              f"a derivation keeps what trained it ({', '.join(SUPERNET_KEYS)})")


def derive_from_supernet(cfg: DictConfig, run_dir: Path, given: Iterable[str] = ()) -> dict:
    """Derive (or, in a finished run folder, report) one architecture from ``cfg.supernet``; returns the metadata
    written into ``arch.json``. ``given``: the command line's overrides, checked by :func:`check_given`."""
    check_config(cfg, "derive")
    with run_folder(run_dir):  # one writer per run folder
        return _derive(cfg, Path(run_dir), list(given))


def _derive(cfg: DictConfig, run_dir: Path, given: list[str]) -> dict:
    t_start = time.perf_counter()
    source = Path(cfg.supernet).resolve()
    state = load_checkpoint(source / CHECKPOINT, kind="supernet")
    saved = state["config"]
    check_given(given, cfg, saved, source)
    scfg = derivation_config(cfg, saved)
    config = OmegaConf.to_container(scfg, resolve=True)
    accel = accelerator.from_config(scfg)
    dist_info = init_distributed(accel)
    set_threads(scfg.threads)
    if (run_dir / "arch.json").exists():
        arch = Arch.load(run_dir / "arch.json")
        check_resume_config(arch.metadata["config"], config, run_dir / "arch.json")
        if dist_info.is_main:
            log.info("%s already holds a finished derivation; nothing rewritten\n%s", run_dir,
                     search_summary_text(arch, run_dir, arch.metadata["search"]["target_ms"],
                                   arch.metadata["search"]["device"]))
        return arch.metadata
    if cfg.front.devices:
        scfg.log_devices = list(dict.fromkeys([*cfg.front.devices, *scfg.log_devices]))  # a table per device
    setup = prepare(scfg, dist_info, accel)
    st = build_state(scfg, setup)
    st.model.load_state_dict(state["model"])
    st.epoch, st.step, st.history = state["epoch"] + 1, state["step"], state["history"]
    st.arch_steps, st.wall_s = state.get("arch_steps", 0), state.get("wall_s", 0.0)
    provenance = {"supernet": {
        "run_dir": str(source), "searched_for": {"device": saved["device"]["name"], "latency": saved["latency"]},
        "recipe": {k: saved[k] for k in SUPERNET_KEYS if k in saved}, "search_wall_s": st.wall_s,
        "epochs": st.epoch, "arch_steps": st.arch_steps}}
    if cfg.front.devices:
        return front(scfg, setup, st, run_dir, list(cfg.front.devices), int(cfg.front.targets), provenance)
    if dist_info.is_main:
        log.info("deriving for %s at %s from the supernet of %s (searched for %s at %s, %d epochs)",
                 setup.device, scfg.latency, source, saved["device"]["name"], saved["latency"], st.epoch)
        note = reuse_note(saved, setup.device, scfg.latency)
        if note:
            log.warning("%s", note)
    return export(scfg, setup, st, run_dir, dist_info, time.perf_counter() - t_start, provenance)


REUSABLE_SAMPLING = "sandwich"  # the recipe a supernet for many targets is trained with (supernet_recipes.md)


def reuse_note(saved: dict, device: str, latency) -> str | None:
    """A warning when a supernet trained for one latency band (``train.sampling=band``) is derived elsewhere:
    the recipe measured to rank many targets' architectures best is :data:`REUSABLE_SAMPLING`."""
    sampling = saved.get("train", {}).get("sampling")
    if sampling != "band" or (device == saved["device"]["name"] and latency == saved["latency"]):
        return None
    return (f"this supernet was trained for the band of {saved['device']['name']} at {saved['latency']} "
            f"(train.sampling=band); at other targets it ranks architectures worse: for a supernet derived at many "
            f"targets, search once with train.sampling={REUSABLE_SAMPLING} "
            "(experiments/results/supernet_recipes.md)")


# -- fronts ---------------------------------------------------------------------------------------
README_POINT = ("vpu", 30.0)  # the README's main command, marked on a front's plot
FRONT_CSV, FRONT_PNG = "front.csv", "front.png"

def front(cfg: DictConfig, setup: Setup, st: State, run_dir: Path, devices: list[str], n: int,
          provenance: dict) -> dict:
    """Derive at ``n`` targets per device (:func:`ladder_ms`) with ``derive.*``; each point's table latency,
    budget used and held-out top-1 with the supernet's weights. ``front.csv`` is written after every point and a
    rerun derives only the points it lacks (a killed front resumes); ``front.png`` once all are there. A finished
    front is reported and nothing is rewritten."""
    csv = run_dir / FRONT_CSV
    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    have = {(r["device"], round(float(r["target_ms"]), 2)) for r in rows}
    todo = [(device, target) for device in devices for target in ladder_ms(setup.tables[device], n, int(cfg.seed))
            if (device, target) not in have]
    if not todo:
        log.info("%s already holds a finished front; nothing rewritten\n%s", run_dir,
                 pd.DataFrame(rows).to_string(index=False))
        return {"front": rows, **provenance}
    val = make_loader(shard(setup.val_part), 256, False, 0)
    for device, target in tqdm(todo, desc=f"front ({len(rows)} of {len(rows) + len(todo)} points done)"):
        at = replace(setup, device=device, target_ms=target, budgets={})  # one budget per point
        choices, how, _ = derive_choices(cfg, at, st)
        ms = at.table.arch_ms(at.space.arch(choices))
        st.model.pin(choices)
        rows.append({"device": device, "target_ms": target, "latency_ms": round(ms, 4),
                     "budget_used": round(ms / target, 4), "val_top1_supernet": evaluate(st.model, val,
                                                                                        setup.accel)["top1"],
                     "predictor": at.table.predictor, "provenance": at.table.provenance, "derivation": how,
                     "choices": " ".join(choices)})
        atomic_write_text(csv, pd.DataFrame(rows).to_csv(index=False))
    table = pd.DataFrame(rows)
    atomic_save_figure(front_plot(table, provenance["supernet"]["run_dir"]), run_dir / FRONT_PNG)
    log.info("front of %d points on %s\n%s\noutputs in %s: %s %s", len(table), ", ".join(devices),
             table.drop(columns=["choices", "derivation", "predictor", "provenance"]).to_string(index=False),
             run_dir, FRONT_CSV, FRONT_PNG)
    return {"front": rows, **provenance}


def front_plot(table: pd.DataFrame, source: str):
    """Per device: table latency against held-out top-1 with the supernet's weights; the README's point marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    devices = list(dict.fromkeys(table.device))
    fig, axes = plt.subplots(1, len(devices), figsize=(4.5 * len(devices), 3.6), squeeze=False)
    for ax, device in zip(axes[0], devices, strict=True):
        part = table[table.device == device].sort_values("latency_ms")
        ax.plot(part.latency_ms, part.val_top1_supernet, "o-")
        if device == README_POINT[0]:
            ax.axvline(README_POINT[1], ls="--", c="grey", label=f"README default ({device} {README_POINT[1]:g} ms)")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(f"{device} latency (ms, {part.provenance.iloc[0]})")
        ax.set_ylabel("held-out top-1, supernet weights")
        ax.set_title(f"{device}: {len(part)} targets")
    fig.suptitle(f"front of one supernet: {Path(source).name}", fontsize=9)
    fig.tight_layout()
    return fig


def _given() -> list[str]:
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task)


@hydra.main(version_base=None, config_path="pkg://conf", config_name="derive")
def _main(cfg: DictConfig) -> None:
    code = run_cli(lambda: derive_from_supernet(cfg, hydra_run_dir(), _given()))
    if code:
        sys.exit(code)


def main() -> None:
    """The ``derive`` command: its own ``--help`` (every option described), else Hydra's run."""
    show_help_if_asked("derive")
    _main()


if __name__ == "__main__":
    main()
