"""Figures shared by the benchmarks: one panel per device, written atomically."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search_spaces.io import atomic_save_figure


@contextmanager
def device_panels(devices: list[str], path: Path, dpi: int = 100) -> Iterator[list]:
    """Yields ``[(axes, device), ...]``, one panel per device side by side; saves the figure to ``path`` on exit."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(devices), figsize=(4.2 * len(devices), 3.6), squeeze=False)
    try:
        yield list(zip(axes[0], devices))
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    atomic_save_figure(fig, path, dpi)
