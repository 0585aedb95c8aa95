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
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nas import accelerator
from nas.checkpoint import CHECKPOINT, check_resume_config, load_checkpoint
from nas.cli import hydra_run_dir, run_cli
from nas.config import ConfigError, check_config
from nas.loops import init_distributed, set_threads
from nas.runlock import run_folder
from nas.search import build_state, export, prepare, search_summary_text
from search_spaces.arch import Arch

log = logging.getLogger("nas.derive")

# What trained the supernet: read from its checkpoint, never from the command line.
SUPERNET_KEYS = ("dataset", "search_space", "seed", "mode", "train", "arch", "loss", "quad_impl")
OWN_KEYS = ("supernet", "hydra")  # keys of conf/derive.yaml that are not a search's


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
    setup = prepare(scfg, dist_info, accel)
    st = build_state(scfg, setup)
    st.model.load_state_dict(state["model"])
    st.epoch, st.step, st.history = state["epoch"] + 1, state["step"], state["history"]
    st.arch_steps, st.wall_s = state.get("arch_steps", 0), state.get("wall_s", 0.0)
    provenance = {"supernet": {
        "run_dir": str(source), "searched_for": {"device": saved["device"]["name"], "latency": saved["latency"]},
        "recipe": {k: saved[k] for k in SUPERNET_KEYS if k in saved}, "search_wall_s": st.wall_s,
        "epochs": st.epoch, "arch_steps": st.arch_steps}}
    if dist_info.is_main:
        log.info("deriving for %s at %s from the supernet of %s (searched for %s at %s, %d epochs)",
                 setup.device, scfg.latency, source, saved["device"]["name"], saved["latency"], st.epoch)
    return export(scfg, setup, st, run_dir, dist_info, time.perf_counter() - t_start, provenance)


def _given() -> list[str]:
    from hydra.core.hydra_config import HydraConfig
    return list(HydraConfig.get().overrides.task)


@hydra.main(version_base=None, config_path="pkg://conf", config_name="derive")
def main(cfg: DictConfig) -> None:
    code = run_cli(lambda: derive_from_supernet(cfg, hydra_run_dir(), _given()))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
