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

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nas.cli import hydra_run_dir, run_cli
from nas.job import recorded_dataset
from nas.trainer import train

log = logging.getLogger("nas.retrain")


def with_recorded_dataset(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config on the arch file's own dataset when the command line names none (else ``cfg`` as is)."""
    arch = cfg.get("arch")
    if arch is None or any(o.lstrip("+~").split("=")[0] == "dataset" for o in overrides):
        return cfg
    name = recorded_dataset(arch)
    if name is None or name == cfg.dataset.name:
        return cfg
    log.info("dataset=%s, as recorded in %s (pass dataset=... to train on another)", name, arch)
    return hydra.compose(config_name="retrain", overrides=[*overrides, f"dataset={name}"])


@hydra.main(version_base=None, config_path="pkg://conf", config_name="retrain")
def main(cfg: DictConfig) -> None:
    code = run_cli(lambda: train(with_recorded_dataset(cfg, list(HydraConfig.get().overrides.task)),
                                 hydra_run_dir()))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
