"""TensorBoard logging shared by the search and the trainer: namespaced tags and hparams.

Tags are grouped so TensorBoard's sections read the same in every run:
``train/*`` (weights' loss, accuracy, learning rate), ``val/*`` and ``test/*`` (held-out and test
accuracy), ``arch/*`` (architecture loss, entropy, constraint weight), ``latency/*`` (ms on each
device's table) and ``time/*``. Per-step losses go to ``train/loss_step`` and ``arch/loss_step``
every :data:`STEP_EVERY` steps. At the end of a run :func:`log_hparams` writes the run's
hyper-parameters with its final metrics, so a sweep's runs compare in the HPARAMS tab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

STEP_EVERY = 10  # per-step scalars every N optimizer steps (every step would bloat the event files)

# history keys of nas.search and nas.trainer -> tags; a key absent here is not logged as a scalar
TAGS = {
    "train_loss": "train/loss", "train_acc": "train/acc", "lr": "train/lr",
    "val_top1_argmax": "val/top1_argmax", "test_top1": "test/top1", "test_loss": "test/loss",
    "arch_loss": "arch/loss", "entropy": "arch/entropy", "constraint_weight": "arch/constraint_weight",
    "argmax_ms": "latency/argmax_ms", "train_time_s": "time/train_s",
}


def tag(key: str) -> str | None:
    """The namespaced tag of a history key (``E[LAT]_vpu_ms`` -> ``latency/E_vpu_ms``), or None."""
    if key.startswith("E[LAT]_"):
        return "latency/E_" + key[len("E[LAT]_"):]
    return TAGS.get(key)


def open_writer(run_dir: Path, step: int):
    """A writer for ``run_dir/tb`` that drops events after ``step`` left by an interrupted run."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(Path(run_dir) / "tb"), purge_step=step if step else None)


def log_row(writer, row: Mapping[str, object], step: int) -> None:
    """The finite float values of one history row under their tags."""
    for key, value in row.items():
        name = tag(key)
        if name is not None and isinstance(value, float) and math.isfinite(value):
            writer.add_scalar(name, value, step)
    writer.flush()


def log_step(writer, step: int, **losses: float) -> None:
    """Per-step losses (``train=...``, ``arch=...``) every :data:`STEP_EVERY` steps."""
    if writer is None or step % STEP_EVERY:
        return
    for group, value in losses.items():
        if value is not None and math.isfinite(value):
            writer.add_scalar(f"{group}/loss_step", value, step)


def log_hparams(writer, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
    """Hyper-parameters (scalars kept, anything else as text) with the run's final metrics."""
    clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
    finite = {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    writer.add_hparams(clean, finite, run_name=".")
    writer.flush()
