"""Latency measured on this machine (CPU) or on a CUDA device, behind the Predictor protocol.

Protocol of one measurement: the module in eval mode under ``torch.no_grad()`` (its training flag
is restored afterwards), a fixed intra-op thread count (``torch.set_num_threads``, restored
afterwards), ``warmup`` untimed runs, then ``repeats`` timed runs; the reported latency is their
median and the error note gives the spread (IQR). CPU runs are timed with
``time.perf_counter``; CUDA runs with CUDA events, synchronising after each run. Python's garbage
collector is paused while timing.

``engine="onnxruntime"`` times the same module exported to ONNX (TorchScript exporter, opset 20)
in an onnxruntime session with the same thread count.

A lookup table (:meth:`MeasuredPredictor.price_table`) times every entry in ``table_passes``
interleaved passes (all entries once, then all again, ...), each pass with its warm-up and its share
of ``repeats``. An entry's latency is the median of all its samples. The table is labelled with its
spread: the per-entry IQR relative to the entry (median and largest), the largest difference between
two passes' medians of one entry (what a rebuild on a machine whose load drifts can move), and the
load average while it was built; a load above the CPUs available is warned about in one log line.
"""

from __future__ import annotations

import copy
import functools
import gc
import io
import logging
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from latency.base import MEASURED, Latency

ENGINES = ("torch", "onnxruntime")
TABLE_PASSES = 2  # interleaved passes over a table's entries: the spread between them is reported
PERCENT = 100.0

logger = logging.getLogger(__name__)

TableEntry = tuple[str, nn.Module, tuple[int, ...]]  # (label for the spread note, module, input shape)


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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def warn_if_loaded(what: str) -> float | None:
    """Log one warning line when the 1-minute load average exceeds the CPUs available; return the load."""
    load, cpus = load_average(), available_cpus()
    if load is not None and load > cpus:
        logger.warning("%s: load average %.1f exceeds the %d CPUs available, so the timings are noisy; "
                       "rebuild the table when the machine is quiet (latency.lut rebuild=true)", what, load, cpus)
    return load


@dataclass(frozen=True)
class EntrySamples:
    """Timed samples (ms) of one table entry, one tuple per interleaved pass."""

    label: str
    passes: tuple[tuple[float, ...], ...]

    @property
    def samples(self) -> list[float]:
        return [s for one_pass in self.passes for s in one_pass]

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def iqr_ms(self) -> float:
        q25, q75 = _quartiles(self.samples)
        return q75 - q25

    @property
    def relative_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def pass_gap_ms(self) -> float:
        """The largest |difference| between two passes' medians."""
        medians = [statistics.median(p) for p in self.passes]
        return float(max(medians) - min(medians))


def table_spread_note(entries: Sequence[EntrySamples], loads: Sequence[float | None], cpus: int) -> str:
    """The label of a measured table: samples per entry, per-entry relative IQR (median and largest), the
    largest difference between passes and the load while building."""
    n_passes = len(entries[0].passes)
    widest = max(entries, key=lambda e: e.relative_iqr)
    median_rel = statistics.median(e.relative_iqr for e in entries)
    note = (f"median of {len(entries[0].samples)} runs per entry in {n_passes} interleaved passes; "
            f"per-entry IQR {PERCENT * median_rel:.1f}% of the entry (median), up to "
            f"{PERCENT * widest.relative_iqr:.1f}% ({widest.iqr_ms:.3f} ms, {widest.label})")
    if n_passes > 1:
        drift = max(entries, key=lambda e: e.pass_gap_ms)
        note += (f"; passes differ by up to {drift.pass_gap_ms:.3f} ms "
                 f"({PERCENT * drift.pass_gap_ms / drift.median_ms:.1f}%, {drift.label})")
    known = [x for x in loads if x is not None]
    if known:
        note += f"; load {min(known):.1f}-{max(known):.1f} on {cpus} CPUs"
    return note


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
    """Collect once and pause the garbage collector; nested uses inside a paused scope cost nothing (a full
    collection takes ~0.1 s with torch and pandas loaded, more than timing a small table entry)."""
    was_enabled = gc.isenabled()
    if was_enabled:
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


def _parts_in_context(net: nn.Module, parts: dict[str, nn.Module], x: torch.Tensor, warmup: int,
                      repeats: int) -> dict[str, list[float]]:
    """``warmup`` untimed runs of ``net(x)``, then ``repeats`` runs with each part timed (ms) by a forward hook
    pair around it (host clock)."""
    started: dict[str, float] = {}
    samples: dict[str, list[float]] = {name: [] for name in parts}
    names = {id(m): name for name, m in parts.items()}

    def start(module: nn.Module, args: tuple) -> None:
        started[names[id(module)]] = time.perf_counter()

    def stop(module: nn.Module, args: tuple, out: Any) -> None:
        name = names[id(module)]
        samples[name].append((time.perf_counter() - started[name]) * 1e3)

    for _ in range(warmup):
        net(x)
    hooks = [h for m in parts.values() for h in (m.register_forward_pre_hook(start), m.register_forward_hook(stop))]
    try:
        for _ in range(repeats):
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return samples


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
        table_passes: int = TABLE_PASSES,
    ) -> None:
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if warmup < 0 or repeats < 1:
            raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
        if table_passes < 1:
            raise ValueError(f"need table_passes >= 1, got {table_passes}")
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
        self.table_passes = int(table_passes)
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
            f"warmup {self.warmup}; repeats {self.repeats}; median; "
            f"tables: {self.table_passes} interleaved passes of {self.repeats_per_pass} repeats"
            + ("; CPU tables: every part timed inside whole networks" if dev.type == "cpu" else "")
        )

    @property
    def repeats_per_pass(self) -> int:
        """Timed runs of a table entry in each pass: the passes share ``repeats``."""
        return math.ceil(self.repeats / self.table_passes)

    # -- timing ---------------------------------------------------------------------------------

    def _timed_runs(self, run: Callable[[], Any], repeats: int) -> list[float]:
        cuda = self.device.type == "cuda"
        samples: list[float] = []
        with _gc_paused():
            for _ in range(self.warmup):
                run()
            if cuda:
                torch.cuda.synchronize(self.device)
            for _ in range(repeats):
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

    def _torch_samples(self, module: nn.Module, shape: tuple[int, ...], repeats: int) -> list[float]:
        work = module
        if _module_device(module) not in (None, self.device):
            work = copy.deepcopy(module).to(self.device)  # never move the caller's module
        x = torch.randn(shape, device=self.device)
        was_training = module.training
        try:
            work.eval()
            with torch.no_grad():
                return self._timed_runs(lambda: work(x), repeats)
        finally:
            module.train(was_training)

    def _onnxruntime_samples(self, module: nn.Module, shape: tuple[int, ...], repeats: int) -> list[float]:
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
        return self._timed_runs(lambda: session.run(None, feed), repeats)

    def measure(self, module: nn.Module, input_shape: Sequence[int], repeats: int | None = None) -> list[float]:
        """All timed samples in ms (warm-up excluded): ``repeats`` of them, default the predictor's."""
        shape = tuple(int(d) for d in input_shape)
        repeats = self.repeats if repeats is None else int(repeats)
        with _fixed_threads(self.threads):
            if self.engine == "onnxruntime":
                return self._onnxruntime_samples(module, shape, repeats)
            return self._torch_samples(module, shape, repeats)

    def measure_passes(self, entries: Sequence[TableEntry],
                       on_entry: Callable[[], object] | None = None) -> list[EntrySamples]:
        """Time every entry in :attr:`table_passes` interleaved passes of :attr:`repeats_per_pass` runs."""
        runs: list[list[tuple[float, ...]]] = [[] for _ in entries]
        with _gc_paused():  # one collection for the whole table
            for _ in range(self.table_passes):
                for runs_of_entry, (_, module, shape) in zip(runs, entries, strict=True):
                    runs_of_entry.append(tuple(self.measure(module, shape, self.repeats_per_pass)))
                    if on_entry is not None:
                        on_entry()
        return [EntrySamples(label, tuple(r)) for (label, _, _), r in zip(entries, runs, strict=True)]

    def measure_in_context(self, nets: Sequence[tuple[nn.Module, dict[str, nn.Module], tuple[int, ...]]],
                           on_net: Callable[[], object] | None = None
                           ) -> list[tuple[dict[str, EntrySamples], EntrySamples]]:
        """Time networks whole and each named part *inside* them, in :attr:`table_passes` interleaved passes.

        Per network and pass: :attr:`warmup` untimed runs, :attr:`repeats_per_pass` runs with a forward hook
        pair timing every part (so each part runs on the input its predecessor made, with the caches that
        left), and as many runs without hooks (the whole network). CPU only: the hooks read the host clock.
        Returns, per network, the parts' samples by name and the whole network's samples.
        """
        if self.device.type != "cpu":
            raise ValueError(f"timing parts in context reads the host clock; {self.name} runs on {self.device}")
        part_runs: list[dict[str, list[tuple[float, ...]]]] = [{name: [] for name in parts} for _, parts, _ in nets]
        whole_runs: list[list[tuple[float, ...]]] = [[] for _ in nets]
        with _gc_paused(), _fixed_threads(self.threads), torch.no_grad():
            for _ in range(self.table_passes):
                for (net, parts, shape), runs, whole in zip(nets, part_runs, whole_runs, strict=True):
                    x = torch.randn(shape)
                    net.eval()
                    for name, samples in _parts_in_context(net, parts, x, self.warmup, self.repeats_per_pass).items():
                        runs[name].append(tuple(samples))
                    whole.append(tuple(self._timed_runs(functools.partial(net, x), self.repeats_per_pass)))
                    if on_net is not None:
                        on_net()
        return [({name: EntrySamples(name, tuple(r)) for name, r in runs.items()},
                 EntrySamples("whole network", tuple(whole)))
                for runs, whole in zip(part_runs, whole_runs, strict=True)]

    def price_table(self, entries: Sequence[TableEntry], progress: bool = False,
                    desc: str = "LUT") -> tuple[list[Latency], str]:
        """Latencies of a table's entries (interleaved passes) and the table's spread note; warns in one
        log line, before any progress bar, when the machine is loaded."""
        if not entries:
            return [], ""
        load_before = warn_if_loaded(f"measuring a latency table on {self.name}")
        with tqdm(total=len(entries) * self.table_passes, desc=desc, disable=not progress, leave=False) as bar:
            measured = self.measure_passes(entries, on_entry=bar.update)
        loads = (load_before, load_average())
        latencies = [Latency(ms=e.median_ms, predictor=self.name, provenance=self.provenance,
                             error_note=f"median of {len(e.samples)} in {len(e.passes)} passes, IQR {e.iqr_ms:.3f} ms, "
                                        f"passes differ by {e.pass_gap_ms:.3f} ms")
                     for e in measured]
        return latencies, table_spread_note(measured, loads, available_cpus())

    def module_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> Latency:
        samples = self.measure(module, input_shape)
        median = statistics.median(samples)
        q25, q75 = _quartiles(samples)
        note = f"median of {len(samples)}, IQR {q75 - q25:.3f} ms"
        return Latency(ms=float(median), predictor=self.name, provenance=self.provenance, error_note=note)
