"""Latency measured on this machine (CPU) or on a CUDA device, behind the Predictor protocol.

Protocol of one measurement: the module in eval mode under ``torch.no_grad()`` (its training flag
is restored afterwards), a fixed intra-op thread count (``torch.set_num_threads``, restored
afterwards), ``warmup`` untimed runs, then ``repeats`` timed runs; the reported latency is their
median and the error note gives the spread (IQR). CPU runs are timed with
``time.perf_counter``; CUDA runs with CUDA events, synchronising after each run. Python's garbage
collector is paused while timing.

``engine="onnxruntime"`` times the same module exported to ONNX (TorchScript exporter, opset 20)
in an onnxruntime session with the same thread count.
"""

from __future__ import annotations

import copy
import gc
import io
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from latency.base import MEASURED, Latency

ENGINES = ("torch", "onnxruntime")


@lru_cache(maxsize=1)
def host_cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fp:
            for line in fp:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("model name", "hardware", "processor name") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def _quartiles(samples: Sequence[float]) -> tuple[float, float]:
    q25, q75 = np.percentile(np.asarray(samples, dtype=float), [25, 75])
    return float(q25), float(q75)


@contextmanager
def _fixed_threads(threads: int):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def _gc_paused():
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


class MeasuredPredictor:
    """Times modules on this host (``device="cpu"``) or a CUDA device (``device="cuda"``).

    ``threads``: intra-op threads while timing (default: torch's current setting, fixed when the
    predictor is made). ``warmup`` untimed runs, then the median of ``repeats`` timed runs.
    """

    def __init__(
        self,
        device: str = "cpu",
        threads: int | None = None,
        warmup: int = 10,
        repeats: int = 30,
        engine: str = "torch",
    ) -> None:
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if warmup < 0 or repeats < 1:
            raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} requested but CUDA is not available to torch {torch.__version__} "
                f"(built with CUDA {torch.version.cuda}); measure on 'cpu' or run on a CUDA machine"
            )
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev
        self.threads = int(threads) if threads is not None else torch.get_num_threads()
        self.warmup = int(warmup)
        self.repeats = int(repeats)
        self.engine = engine
        if engine == "onnxruntime":
            import onnxruntime as ort

            wanted = "CUDAExecutionProvider" if dev.type == "cuda" else "CPUExecutionProvider"
            if wanted not in ort.get_available_providers():
                raise RuntimeError(f"onnxruntime {ort.__version__} has no {wanted} on this machine")
            self._providers = [(wanted, {"device_id": dev.index})] if dev.type == "cuda" else [wanted]
            engine_version = f"onnxruntime {ort.__version__}"
        else:
            engine_version = "torch eager"

        suffix = "" if engine == "torch" else "-onnxruntime"
        if dev.type == "cpu":
            self.name = f"measured/host-cpu-{self.threads}threads{suffix}"
            hardware = f"cpu {host_cpu_name()}; threads {self.threads}"
        else:
            gpu = torch.cuda.get_device_name(dev)
            self.name = f"measured/cuda-{gpu.replace(' ', '_')}{suffix}"
            hardware = f"gpu {gpu}; cuda {torch.version.cuda}; host threads {self.threads}"
        self.provenance = MEASURED
        self.version = (
            f"torch {torch.__version__}; {engine_version}; {hardware}; "
            f"warmup {self.warmup}; repeats {self.repeats}; median"
        )

    # -- timing ---------------------------------------------------------------------------------

    def _timed_runs(self, run: Callable[[], Any]) -> list[float]:
        cuda = self.device.type == "cuda"
        samples: list[float] = []
        with _gc_paused():
            for _ in range(self.warmup):
                run()
            if cuda:
                torch.cuda.synchronize(self.device)
            for _ in range(self.repeats):
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    run()
                    end.record()
                    torch.cuda.synchronize(self.device)
                    samples.append(float(start.elapsed_time(end)))
                else:
                    t0 = time.perf_counter()
                    run()
                    samples.append((time.perf_counter() - t0) * 1e3)
        return samples

    def _torch_samples(self, module: nn.Module, shape: tuple[int, ...]) -> list[float]:
        work = module
        if _module_device(module) not in (None, self.device):
            work = copy.deepcopy(module).to(self.device)  # never move the caller's module
        x = torch.randn(shape, device=self.device)
        was_training = module.training
        try:
            work.eval()
            with torch.no_grad():
                return self._timed_runs(lambda: work(x))
        finally:
            module.train(was_training)

    def _onnxruntime_samples(self, module: nn.Module, shape: tuple[int, ...]) -> list[float]:
        import onnxruntime as ort

        cpu_module = copy.deepcopy(module).cpu().eval()
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(cpu_module, (torch.randn(shape),), buffer, dynamo=False, opset_version=20,
                              input_names=["input"], output_names=["output"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(buffer.getvalue(), options, providers=self._providers)
        feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return self._timed_runs(lambda: session.run(None, feed))

    def measure(self, module: nn.Module, input_shape: Sequence[int]) -> list[float]:
        """All timed samples in ms (warm-up excluded)."""
        shape = tuple(int(d) for d in input_shape)
        with _fixed_threads(self.threads):
            if self.engine == "onnxruntime":
                return self._onnxruntime_samples(module, shape)
            return self._torch_samples(module, shape)

    def module_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        samples = self.measure(module, input_shape)
        median = statistics.median(samples)
        q25, q75 = _quartiles(samples)
        note = f"median of {len(samples)}, IQR {q75 - q25:.3f} ms"
        return Latency(ms=float(median), predictor=self.name, provenance=self.provenance, error_note=note)
