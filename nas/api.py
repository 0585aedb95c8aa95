"""QuadraNAS from Python: the functions the commands run, composed from the same configs.

    from nas.api import derive, retrain, search

    found = search("runs/vpu30", device="vpu", latency="30ms", overrides=["train.epochs=2"])
    cpu = derive("runs/cpu20", supernet=found.run_dir, device="cpu", latency="20ms")
    trained = retrain("runs/net", arch=found.arch_path, overrides=["train.epochs=1"])
    print(found.choices, found.latency_ms["vpu"]["ms"], cpu.choices, trained.top1)

Each function takes the run folder, top-level options as keywords (``device="vpu"``, ``log_devices=["vpu"]``) and
any dotted option in ``overrides`` (Hydra's ``key=value`` strings), checks them as the command would (a bad value
raises :class:`nas.config.ConfigError`, naming it), runs or resumes the run in that folder and returns a
:class:`Result`. A module of its own: ``nas.search``, ``nas.derive`` and ``nas.retrain`` are the commands' modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from search_spaces.arch import Arch


@dataclass(frozen=True)
class Result:
    """What one run produced. ``latency_ms``: per device, the latency record (``ms``, ``predictor``,
    ``provenance``, ``error_note``; a measured table's also ``whole_net_ms`` and ``table_error_pct``);
    ``metadata``: everything the run wrote (``arch.json``'s metadata, or ``results.json``)."""

    run_dir: Path
    choices: tuple[str, ...]
    latency_ms: dict[str, dict]
    arch_path: Path | None = None  # search, derive
    top1: float | None = None  # retrain: test top-1
    metadata: Mapping[str, Any] | None = None


def _value(value: Any) -> str:
    """A Python value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def config(entry: str, options: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> DictConfig:
    """The composed config of ``entry`` (``search``, ``derive``, ``retrain``, ...) with ``options`` (top-level
    keys) and ``overrides`` (``key=value`` strings), as the command line would compose it."""
    words = [f"{k}={_value(v)}" for k, v in (options or {}).items()] + list(overrides)
    with initialize_config_module(config_module="conf", version_base=None):
        return compose(entry, overrides=words)


def _export_result(run_dir: Path, meta: dict) -> Result:
    arch = Arch.load(run_dir / "arch.json")
    return Result(run_dir, tuple(arch.choices), meta["latency_ms"], run_dir / "arch.json", None, meta)


def search(run_dir: str | Path, overrides: Iterable[str] = (), **options: Any) -> Result:
    """``python -m nas.search``: search (or resume, or report a finished search) in ``run_dir``."""
    from nas.search import search as run
    run_dir = Path(run_dir)
    return _export_result(run_dir, run(config("search", options, overrides), run_dir))


def derive(run_dir: str | Path, supernet: str | Path, overrides: Iterable[str] = (), **options: Any) -> Result:
    """``python -m nas.derive``: one architecture from the supernet of the finished search in ``supernet``."""
    from nas.derive import derive_from_supernet
    run_dir, words = Path(run_dir), [f"{k}={_value(v)}" for k, v in options.items()] + list(overrides)
    cfg = config("derive", {"supernet": supernet}, words)
    return _export_result(run_dir, derive_from_supernet(cfg, run_dir, given=words))


def retrain(run_dir: str | Path, overrides: Iterable[str] = (), **options: Any) -> Result:
    """``python -m nas.retrain``: train (or resume) ``arch=`` or ``model=`` from scratch; ``dataset`` defaults to
    the one the architecture was searched on, as on the command line."""
    from nas.retrain import with_recorded_dataset
    from nas.trainer import train
    run_dir = Path(run_dir)
    words, _ = with_recorded_dataset([f"{k}={_value(v)}" for k, v in options.items()] + list(overrides))
    results = train(config("retrain", overrides=words), run_dir)
    if "stopped_after_epoch" in results:  # train.stop_after: an unfinished run, resumed by calling again
        return Result(run_dir, (), {}, None, None, results)
    return Result(run_dir, tuple(results["choices"]), results["latency_ms"], None, results["top1"], results)
