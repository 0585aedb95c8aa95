"""Re-evaluate a trained network: ``python -m nas.evaluate checkpoint=RUN/checkpoint.pt``.

Rebuilds the network from the architecture stored in the checkpoint (EMA weights when it kept
them), measures top-1 on the test split of the dataset it was trained on (or ``dataset=...``),
params/MACs, predicted latency on every device profile and on this host, re-exports
``model.onnx`` (``eval.onnx=false`` to skip) and rewrites ``results.json`` next to the checkpoint
and its row in ``results_csv``. Exit code 2 on a missing/corrupt checkpoint or bad input.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from nas.cli import run_cli
from nas.options import show_help_if_asked
from nas.report import evaluate_checkpoint


@hydra.main(version_base=None, config_path="pkg://conf", config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    code = run_cli(lambda: evaluate_checkpoint(cfg))
    if code:
        sys.exit(code)


def main() -> None:
    """The ``evaluate`` command: its own ``--help`` (every option described), else Hydra's run."""
    show_help_if_asked("evaluate")
    _main()


if __name__ == "__main__":
    main()
