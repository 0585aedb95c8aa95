"""Retrain a searched architecture: ``python -m nas.retrain arch=PATH/arch.json``.

Options (conf/retrain.yaml)::

    init=scratch                     # default: trained from scratch
    init=supernet                    # inherit the chosen paths' weights from <arch.json dir>/checkpoint.pt
    init=PATH/checkpoint.pt          # a `net` checkpoint of the first-order twin (nas.train first_order=true):
                                     #   quadratized (QuadraNet V2), so training starts from its function
    dataset=digits|fashion_mnist|cifar10|imagefolder  (default: the dataset arch.json was searched on)
    train.epochs=5 train.lr=2e-3 train.ema_decay=0.999
    threads=1  results_csv=outputs/results.csv  hydra.run.dir=FOLDER (rerun there to resume)

Multi-process (DDP, gloo on CPU; pass an explicit hydra.run.dir)::

    torchrun --nproc_per_node=2 -m nas.retrain arch=... hydra.run.dir=outputs/retrain/run1

Writes checkpoint.pt, results.json, model.onnx, history.csv and tb/ into the run folder.
Exit code 2 on bad input or a corrupt/mismatched checkpoint, 1 if the loss diverges.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nas.cli import hydra_run_dir, run_cli
from nas.config import DATASETS, USAGE_EXIT
from nas.job import recorded_dataset
from nas.options import show_help_if_asked
from nas.trainer import train
from search_spaces.arch import ArchError

log = logging.getLogger("nas.retrain")


def with_recorded_dataset(args: list[str]) -> tuple[list[str], str | None]:
    """The command line with ``dataset=<name>`` added when ``arch=FILE`` records one and none is given.

    Runs before Hydra composes, so the run folder is named after the dataset trained on and a broken arch
    file fails before any folder exists. The recorded name comes from a file: it must be one of
    :data:`nas.config.DATASETS` before it becomes an override (a ``../`` value would load any YAML on disk).
    Returns the arguments and a note for the log (None when nothing was added).
    """
    if any(a.lstrip("+~").split("=")[0] == "dataset" for a in args):
        return args, None
    arch = next((a.split("=", 1)[1] for a in args if a.startswith("arch=")), None)
    if arch and len(arch) > 1 and arch[0] == arch[-1] and arch[0] in "'\"":
        arch = arch[1:-1]  # quoted for Hydra: a path holding '=' or ',' (a sweep's folder)
    if arch is None or not Path(arch).is_file():
        return args, None  # no arch file: the config check names the problem
    name = recorded_dataset(arch)
    if name is None:
        return args, None
    if name not in DATASETS:
        raise ArchError(f"{arch}: metadata records dataset {name!r}, which is not a dataset; valid: "
                        f"{', '.join(DATASETS)} (pass dataset=NAME to choose one)")
    return [*args, f"dataset={name}"], f"dataset={name}, as recorded in {arch} (pass dataset=... to train on another)"


@hydra.main(version_base=None, config_path="pkg://conf", config_name="retrain")
def _retrain(cfg: DictConfig) -> None:
    if _NOTE:
        log.info("%s", _NOTE[0])
    code = run_cli(lambda: train(cfg, hydra_run_dir()))
    if code:
        sys.exit(code)


_NOTE: list[str] = []  # main() -> _retrain(): Hydra's task function takes only the config


def main() -> None:
    show_help_if_asked("retrain")
    try:
        args, note = with_recorded_dataset(sys.argv[1:])
    except ArchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USAGE_EXIT)
    sys.argv[1:] = args
    _NOTE[:] = [note] if note else []
    _retrain()


if __name__ == "__main__":
    main()
