"""Where and in what precision every training entry point runs: ``accelerator=``, ``precision=``,
``channels_last=``.

* ``accelerator``: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``. Under torchrun each
  process takes the GPU of its ``LOCAL_RANK``; with more processes per node than GPUs they share them
  round-robin, and the process group is gloo (NCCL refuses two ranks on one GPU).
* ``precision`` (the names Lightning users know, short form): ``32`` (float32, strict), ``tf32`` (float32
  storage, TF32 tensor-core matmuls and convolutions and ``cudnn.benchmark`` on CUDA; the same as ``32`` on
  the CPU), ``bf16`` (bfloat16 autocast; no loss scaling needed; checked against the GPU up front), ``16``
  (float16 autocast with a dynamic gradient scaler).
* ``channels_last``: the model's 4-D weights and every image batch in NHWC memory order.

:class:`Accelerator` holds the resolved choice and the few things a loop needs from it: the autocast
context, the gradient scaler (a no-op unless ``precision=16``), and moving modules and batches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

ACCELERATORS = ("auto", "cpu", "cuda")
PRECISIONS = ("32", "tf32", "bf16", "16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


class AcceleratorUnavailable(ValueError):
    """``accelerator=cuda`` on a machine without CUDA (one line; a usage error)."""


def parse_precision(value) -> str:
    """``32``/``"32"``, ``bf16``, ``16``/``"16"`` (Hydra reads ``precision=16`` as an int) -> the short name."""
    text = str(value).strip().lower()
    text = {"32-true": "32", "bf16-mixed": "bf16", "16-mixed": "16", "tf32-true": "tf32"}.get(text, text)
    if isinstance(value, bool) or text not in PRECISIONS:
        raise ValueError(f"precision={value} is invalid; valid: {', '.join(PRECISIONS)}")
    return text


def check_accelerator(name: str) -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cuda`` without CUDA is :class:`AcceleratorUnavailable`."""
    if name not in ACCELERATORS:
        raise ValueError(f"accelerator={name} is invalid; valid: {', '.join(ACCELERATORS)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise AcceleratorUnavailable("accelerator=cuda is invalid: this machine has no CUDA device (torch "
                                     f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                                     "valid here: auto, cpu")
    return name


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def shares_gpus() -> bool:
    """More processes on this node than CUDA devices (e.g. a 2-process check on one GPU): they share GPUs
    round-robin, and the process group must be gloo, since NCCL fails with 'Duplicate GPU'."""
    return local_world_size() > max(torch.cuda.device_count(), 1)


def gpu_index() -> int:
    """This process's GPU: its ``LOCAL_RANK``, round-robin when processes outnumber the GPUs."""
    return local_rank() % max(torch.cuda.device_count(), 1)


def check_precision_support(kind: str, precision: str) -> None:
    """``precision=bf16`` on a GPU without bfloat16 (pre-Ampere) is :class:`AcceleratorUnavailable`."""
    if kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise AcceleratorUnavailable(f"precision=bf16 is invalid: {torch.cuda.get_device_name()} has no bfloat16 "
                                     "support; valid here: 32, tf32, 16")


def set_cuda_math(precision: str) -> None:
    """``tf32``: TF32 tensor cores for float32 matmuls and convolutions and ``cudnn.benchmark`` (the fastest
    kernel per shape); any other precision: strict float32 math and no benchmark (reproducible kernels)."""
    fast = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.backends.cudnn.benchmark = fast


@dataclass
class Accelerator:
    """A resolved ``accelerator``/``precision``/``channels_last`` choice."""

    device: torch.device
    precision: str = "32"
    channels_last: bool = False
    scaler: torch.amp.GradScaler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.precision = parse_precision(self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "16")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision autocast for forward passes and losses (nothing at ``precision=32``)."""
        if self.precision not in AUTOCAST_DTYPES:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def module(self, m: nn.Module) -> nn.Module:
        """``m`` on the device (in place), 4-D weights in the chosen memory format."""
        return m.to(self.device, memory_format=self.memory_format)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def batches(self, loader: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each ``(images, targets)`` of ``loader`` on the device (a no-op for batches already there)."""
        for x, y in loader:
            yield self.tensor(x), y.to(self.device, non_blocking=True)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params, grad_clip: float | None,
                 reduce: Callable[[list[torch.Tensor]], None] | None = None) -> torch.Tensor | None:
        """Zero the grads, backward (scaled at ``precision=16``), ``reduce`` the gradients that backward made
        (DDP without a wrapper: ``None`` grads, the paths that did not run, are not sent), unscale and clip;
        returns the gradient norm (None without clipping). Then :meth:`apply` steps."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        params = list(params)
        if reduce is not None:
            reduce([p.grad for p in params if p.grad is not None])
        if grad_clip is None:
            return None
        self.scaler.unscale_(optimizer)
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step. At ``precision=16`` the scaler skips a step whose gradients overflowed and
        lowers its scale: expected while the scale settles, not a divergence."""
        self.scaler.step(optimizer)
        self.scaler.update()

    @property
    def overflow_expected(self) -> bool:
        """Whether non-finite gradients are part of normal training (``precision=16``'s dynamic scaling)."""
        return self.scaler.is_enabled()

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "CPU"
        return (f"{self.device} ({name}), precision {self.precision}"
                + (", channels_last" if self.channels_last else ""))


def resolve(name: str = "auto", precision="32", channels_last: bool = False) -> Accelerator:
    """The :class:`Accelerator` of a config's ``accelerator``/``precision``/``channels_last``; on CUDA under
    torchrun, the GPU of this process's ``LOCAL_RANK`` (made the current device, round-robin when the processes
    outnumber the GPUs), with the precision's float32 math (:func:`set_cuda_math`)."""
    kind = check_accelerator(name)
    precision = parse_precision(precision)
    check_precision_support(kind, precision)
    if kind == "cuda":
        index = gpu_index()
        torch.cuda.set_device(index)
        set_cuda_math(precision)
        return Accelerator(torch.device("cuda", index), precision, channels_last)
    return Accelerator(torch.device("cpu"), precision, channels_last)


def from_config(cfg) -> Accelerator:
    """:func:`resolve` of a config's keys (older configs without them: auto, 32, false)."""
    return resolve(cfg.get("accelerator", "auto"), cfg.get("precision", "32"), bool(cfg.get("channels_last", False)))
