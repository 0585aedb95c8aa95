"""Train a fixed model or a first-order twin: ``python -m nas.train model=quadranet36_xxs``.

Usage (conf/train.yaml, which extends conf/retrain.yaml)::

    python -m nas.train model=quadranet36_xxs dataset=fashion_mnist train.epochs=5
    python -m nas.train arch=PATH/arch.json first_order=true   # quadra_kK_eE -> convnext_kK_eE
    python -m nas.retrain arch=PATH/arch.json init=RUN/checkpoint.pt   # then: quadratic fine-tuning

Fixed models take the dataset's input shape (stem stride 2 for inputs up to 32 px, else 4).
Outputs and exit codes as for ``nas.retrain``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from nas.cli import hydra_run_dir, run_cli
from nas.options import show_help_if_asked
from nas.trainer import train


@hydra.main(version_base=None, config_path="pkg://conf", config_name="train")
def _main(cfg: DictConfig) -> None:
    code = run_cli(lambda: train(cfg, hydra_run_dir()))
    if code:
        sys.exit(code)


def main() -> None:
    """The ``train`` command: its own ``--help`` (every option described), else Hydra's run."""
    show_help_if_asked("train")
    _main()


if __name__ == "__main__":
    main()
