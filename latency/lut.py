"""Latency lookup tables: every candidate at every searchable layer, plus the fixed part.

A table is built for (search space, device profile, predictor) at the profile's deployment
input shape, whatever resolution the supernet trains at. Candidates whose layer input
shapes coincide are priced once. Tables are cached on disk under a key hashing the space,
the profile (its pricing included) and the predictor version, and rebuilt when any of them changes; the
file name names the pricing (``<space>-<device>-<pricing>-<key>.json``).

    python -m latency.lut device=vpu [search_space=quadra] [pricing=device|nnmeter] [rebuild=true]

``rebuild=true`` builds the table again even when it is cached, e.g. a measured ``host`` table after
the machine's load changed. A thin Hydra app (``conf/tools/lut.yaml``; ``--help`` lists the options).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from latency.base import MEASURED, Latency, Predictor
from latency.measured import (
    PERCENT,
    EntrySamples,
    MeasuredPredictor,
    TableEntry,
    available_cpus,
    load_average,
    table_spread_note,
    warn_if_loaded,
)
from latency.profiles import DeviceProfile, load_profile, resolve_predictor
from search_spaces.arch import Arch, build_net, input_shapes
from search_spaces.blocks import SKIP_OPS, make_op
from search_spaces.io import atomic_write_text
from search_spaces.spaces import SearchSpace

LUT_VERSION = 1
# How a table times its entries: inside whole networks (a measured CPU predictor) or each on its own.
TABLE_METHODS = ("context", "isolated")


def cache_dir() -> Path:
    return Path(os.environ.get("QUADRANAS_CACHE", Path.home() / ".cache" / "quadranas")) / "lut"


def deployment_space(space: SearchSpace, profile: DeviceProfile) -> SearchSpace:
    """The space at the profile's input shape (channels and size); classes and stem kept."""
    return space.with_input(tuple(profile.input_shape[1:]), space.macro.num_classes)


@dataclass
class LatencyTable:
    """``frame`` rows: (layer, op, latency_ms) for candidates; (part, latency_ms) rows are fixed."""

    space: str
    profile: str
    predictor: str
    provenance: str
    error_note: str
    key: str
    layers: pd.DataFrame  # columns: layer, op, latency_ms
    fixed: pd.DataFrame  # columns: part, latency_ms

    @property
    def fixed_ms(self) -> float:
        return float(self.fixed.latency_ms.sum())

    def layer_ms(self) -> list[np.ndarray]:
        """Per layer, candidate latencies in the space's candidate order."""
        return [g.latency_ms.to_numpy() for _, g in self.layers.groupby("layer", sort=True)]

    def ops(self) -> list[list[str]]:
        return [g.op.tolist() for _, g in self.layers.groupby("layer", sort=True)]

    def arch_ms(self, arch: Arch) -> float:
        total = self.fixed_ms
        for ops, ms, choice in zip(self.ops(), self.layer_ms(), arch.choices, strict=True):
            total += float(ms[ops.index(choice)])
        return total

    def range_ms(self) -> tuple[float, float]:
        ms = self.layer_ms()
        return self.fixed_ms + sum(r.min() for r in ms), self.fixed_ms + sum(r.max() for r in ms)

    def latency(self, arch: Arch) -> Latency:
        return Latency(self.arch_ms(arch), self.predictor, self.provenance,
                       (self.error_note + "; " if self.error_note else "") + "sum of per-layer table entries")

    def pivot(self) -> pd.DataFrame:
        return self.layers.pivot(index="layer", columns="op", values="latency_ms")

    # -- persistence -------------------------------------------------------------------
    def to_json(self) -> str:
        meta = {k: getattr(self, k) for k in ("space", "profile", "predictor", "provenance", "error_note", "key")}
        return json.dumps({"lut_version": LUT_VERSION, **meta,
                           "layers": self.layers.to_dict("records"), "fixed": self.fixed.to_dict("records")})

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        d = json.loads(text)
        return cls(d["space"], d["profile"], d["predictor"], d["provenance"], d["error_note"], d["key"],
                   pd.DataFrame(d["layers"]), pd.DataFrame(d["fixed"]))


def table_key(space: SearchSpace, profile: DeviceProfile, predictor: Predictor) -> str:
    macro = deployment_space(space, profile).macro
    blob = json.dumps({"lut": LUT_VERSION, "space": space.name, "macro": repr(macro), "ops": space.ops,
                       "profile": profile.as_dict(), "predictor": predictor.name, "version": predictor.version},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TablePlan:
    """What a table prices, before any timing: one entry per distinct (op, layer input shape), the table cells
    that point at them (a skip op points at none: 0 ms) and the fixed parts (also entries)."""

    space: SearchSpace  # at the deployment shape
    entries: dict[tuple, TableEntry]
    cells: list[tuple[int, str, tuple | None]]  # (layer number, op, entry key or None)
    fixed_parts: list[str]
    input_shape: tuple[int, ...]  # the profile's, batch included


def plan_table(space: SearchSpace, profile: DeviceProfile) -> TablePlan:
    """The entries and cells of ``space``'s table at ``profile``'s deployment shape."""
    dep = deployment_space(space, profile)
    # A concrete network (smallest block at every searchable layer) records each layer's input shape and
    # holds the fixed parts. Identity placeholders would be wrong where a searchable layer changes width or
    # stride (the first layer of every MBConv stage).
    skeleton = build_net(dep.smallest_block_arch())
    shapes = input_shapes(skeleton, batch=profile.batch_size)
    layer_modules = dict(zip([sp.index for sp in dep.macro.layers()], skeleton.layers()))
    number = {index: i for i, index in enumerate(sorted({spec.index for spec in dep.layers()}))}
    # Candidates whose layer input shapes coincide are one entry, priced once.
    entries: dict[tuple, TableEntry] = {}
    cells: list[tuple[int, str, tuple | None]] = []
    for spec in dep.layers():
        shape = shapes[layer_modules[spec.index]]
        for op in dep.candidates(spec):
            key = None if op in SKIP_OPS else (op, spec.in_ch, spec.out_ch, spec.stride, shape)
            if key is not None and key not in entries:
                entries[key] = (f"layer {number[spec.index]} {op}",
                                make_op(op, spec.in_ch, spec.out_ch, spec.stride).eval(), shape)
            cells.append((number[spec.index], op, key))
    fixed_parts = skeleton.fixed_parts()
    for name, mod in fixed_parts.items():
        entries[("fixed", name)] = (f"{name} (fixed)", mod.eval(), shapes[mod])
    return TablePlan(dep, entries, cells, list(fixed_parts), tuple(profile.input_shape))


def assemble_table(space: SearchSpace, profile: DeviceProfile, predictor: Predictor, plan: TablePlan,
                   cell_ms: list[float], fixed_ms: dict[str, float], note: str) -> LatencyTable:
    """The table from a latency per cell of ``plan`` (in its order) and per fixed part."""
    layers = pd.DataFrame([{"layer": layer, "op": op, "latency_ms": ms}
                           for (layer, op, _), ms in zip(plan.cells, cell_ms, strict=True)])
    fixed = pd.DataFrame([{"part": name, "latency_ms": ms} for name, ms in fixed_ms.items()])
    return LatencyTable(space.name, profile.name, predictor.name, predictor.provenance, note,
                        table_key(space, profile, predictor), layers, fixed)


def price_isolated(plan: TablePlan, predictor: Predictor, progress: bool, desc: str
                   ) -> tuple[list[float], dict[str, float], str]:
    """Every entry of ``plan`` priced on its own: cell and fixed-part latencies and the table's note."""
    latencies, note = price_entries(predictor, list(plan.entries.values()), progress, desc)
    return (*entries_to_cells(plan, [lat.ms for lat in latencies]), note)


def entries_to_cells(plan: TablePlan, entry_ms: list[float]) -> tuple[list[float], dict[str, float]]:
    """Cell and fixed-part latencies from one latency per entry of ``plan`` (in its order); skip ops 0 ms."""
    priced = dict(zip(plan.entries, entry_ms, strict=True))
    cell_ms = [0.0 if key is None else priced[key] for _, _, key in plan.cells]
    return cell_ms, {name: priced[("fixed", name)] for name in plan.fixed_parts}


GLUE = "glue"  # the fixed part a table timed in context adds: the whole network minus its timed parts


def carrier_archs(plan: TablePlan) -> list[Arch]:
    """Networks that together hold every candidate of every searchable layer: the j-th takes each layer's j-th
    candidate (its first where the layer has fewer)."""
    ops = [[op for layer, op, _ in plan.cells if layer == n] for n in sorted({c[0] for c in plan.cells})]
    width = max(len(o) for o in ops)
    return [plan.space.arch([o[j] if j < len(o) else o[0] for o in ops]) for j in range(width)]


ContextNet = tuple[nn.Module, dict[str, nn.Module], tuple[int, ...]]  # network, its parts by name, input shape


def context_nets(plan: TablePlan) -> list[ContextNet]:
    """The carriers of ``plan`` (:func:`carrier_archs`) with the parts a table times inside them: each
    searchable layer that is not a skip op (named ``layer <n> <op>``) and each fixed part."""
    nets = []
    for arch in carrier_archs(plan):
        net = build_net(arch).eval()
        parts = {f"layer {n} {op}": m for n, (op, m) in enumerate(zip(arch.choices, net.searchable_layers()))
                 if op not in SKIP_OPS}
        nets.append((net, {**parts, **net.fixed_parts()}, plan.input_shape))
    return nets


def table_from_context(plan: TablePlan, timed: list[tuple[dict[str, EntrySamples], EntrySamples]],
                       loads: tuple[float | None, ...]) -> tuple[list[float], dict[str, float], str]:
    """Cell and fixed-part latencies (and the note) from the carriers' timings: a part's latency is the median of
    its samples in every carrier that holds it; ``glue`` is the median over carriers of the whole network minus
    the sum of its parts. Skip ops cost 0 ms, as in an isolated table."""
    by_part: dict[str, list[EntrySamples]] = {}
    glue = []
    for parts, whole in timed:
        for name, samples in parts.items():
            by_part.setdefault(name, []).append(samples)
        glue.append(whole.median_ms - sum(samples.median_ms for samples in parts.values()))
    merged = {name: EntrySamples(name, tuple(p for s in runs for p in s.passes)) for name, runs in by_part.items()}
    cell_ms = [0.0 if key is None else merged[f"layer {n} {op}"].median_ms for n, op, key in plan.cells]
    fixed_ms = {name: merged[name].median_ms for name in plan.fixed_parts}
    fixed_ms[GLUE] = float(statistics.median(glue))
    note = (f"layers timed in context of {len(timed)} networks; "
            + table_spread_note(list(merged.values()), loads, available_cpus()))
    return cell_ms, fixed_ms, note


def price_in_context(plan: TablePlan, predictor: MeasuredPredictor, progress: bool, desc: str
                     ) -> tuple[list[float], dict[str, float], str]:
    """Every cell and fixed part timed *inside* a whole network, where it reads the layout and the caches its
    predecessor left (:func:`context_nets`, :func:`table_from_context`)."""
    nets = context_nets(plan)
    load_before = warn_if_loaded(f"measuring a latency table on {predictor.name}")
    with tqdm(total=len(nets) * predictor.table_passes, desc=desc, disable=not progress, leave=False) as bar:
        timed = predictor.measure_in_context(nets, on_net=bar.update)
    return table_from_context(plan, timed, (load_before, load_average()))


def build_table(space: SearchSpace, profile: DeviceProfile, predictor: Predictor, progress: bool = True,
                method: str | None = None) -> LatencyTable:
    """The table of ``space`` on ``profile``. ``method`` (one of :data:`TABLE_METHODS`): ``context`` times each
    entry inside whole networks (:func:`price_in_context`; a measured CPU predictor only), ``isolated`` prices
    each on its own (:func:`price_isolated`); default: ``context`` where the predictor can, else ``isolated``."""
    in_context = isinstance(predictor, MeasuredPredictor) and predictor.device.type == "cpu"
    method = method or TABLE_METHODS[0 if in_context else 1]
    if method not in TABLE_METHODS or (method == "context" and not in_context):
        valid = TABLE_METHODS if in_context else TABLE_METHODS[1:]
        raise ValueError(f"method={method} is invalid for {predictor.name}; valid: {', '.join(valid)}")
    plan = plan_table(space, profile)
    desc = f"LUT {space.name}/{profile.name}"
    pricing = price_in_context if method == "context" else price_isolated
    return assemble_table(space, profile, predictor, plan, *pricing(plan, predictor, progress, desc))


def price_entries(predictor: Predictor, entries: list[TableEntry], progress: bool = True,
                  desc: str = "LUT") -> tuple[list[Latency], str]:
    """Latencies of a table's entries and the table's error note. A measured predictor times them in
    interleaved passes and labels the table with its spread; any other predictor prices each entry once."""
    if isinstance(predictor, MeasuredPredictor):
        return predictor.price_table(entries, progress=progress, desc=desc)
    latencies = [predictor.module_ms(module, shape)
                 for _, module, shape in tqdm(entries, desc=desc, disable=not progress, leave=False)]
    notes = sorted({lat.error_note for lat in latencies} - {""})
    return latencies, notes[0] if notes else ""


def table_error_pct(table_ms: float, whole_ms: float) -> float:
    """The table's sum against the whole network, in percent of the whole network."""
    return PERCENT * (table_ms - whole_ms) / whole_ms


def measured_whole(table: LatencyTable, dep_arch: Arch, profile: DeviceProfile) -> dict:
    """For a measured table: the whole network of ``dep_arch`` (deployment shape) timed by the table's predictor
    and the table's error against it (``whole_net_ms``, ``table_error_pct``), so that a measured table's sum is
    never shown alone; ``{}`` for any other table (a predictor prices the whole network as it prices a table)."""
    if table.provenance != MEASURED:
        return {}
    whole = resolve_predictor(profile).module_ms(build_net(dep_arch).eval(), tuple(profile.input_shape))
    return {"whole_net_ms": whole.ms, "table_error_pct": table_error_pct(table.arch_ms(dep_arch), whole.ms)}


def whole_note(latency: dict) -> str:
    """`` (whole network X ms; table +Y%)`` for a latency record that :func:`measured_whole` checked, else ``""``."""
    if latency.get("whole_net_ms") is None:
        return ""
    return f" (whole network {latency['whole_net_ms']:.3f} ms; table {latency['table_error_pct']:+.1f}%)"


def table_vs_whole(space: SearchSpace, profile: DeviceProfile, predictor: MeasuredPredictor, archs: list[Arch],
                   method: str = TABLE_METHODS[0], progress: bool = False) -> tuple[LatencyTable, pd.DataFrame]:
    """Is a measured table additive? Builds the table (its entries timed ``in context`` of whole networks, as
    :func:`build_table` does, or ``isolated``, each on its own) and times the whole networks of ``archs`` (the
    profile's batch and input, the predictor's threads) in the same interleaved passes, so that a machine whose
    speed drifts moves both alike. Returns the table and one row per architecture: ``table_ms`` (the table's
    sum), ``whole_ms`` (the whole network), ``error_pct`` (table against whole) and the whole network's spread."""
    if method not in TABLE_METHODS:
        raise ValueError(f"method={method} is invalid; valid: {', '.join(TABLE_METHODS)}")
    plan = plan_table(space, profile)
    deployed = [plan.space.arch(a.choices) for a in archs]
    whole_nets = [(build_net(a).eval(), {}, plan.input_shape) for a in deployed]
    if method == "context":
        carriers = context_nets(plan)
        with tqdm(total=(len(carriers) + len(archs)) * predictor.table_passes, desc="table and whole networks",
                  disable=not progress, leave=False) as bar:
            timed = predictor.measure_in_context([*carriers, *whole_nets], on_net=bar.update)
        priced = table_from_context(plan, timed[:len(carriers)], ())
        wholes = [whole for _, whole in timed[len(carriers):]]
    else:
        entries = [*plan.entries.values(), *((f"arch {i}", net, shape) for i, (net, _, shape) in enumerate(whole_nets))]
        with tqdm(total=len(entries) * predictor.table_passes, desc="table and whole networks",
                  disable=not progress, leave=False) as bar:
            samples = predictor.measure_passes(entries, on_entry=bar.update)
        k = len(plan.entries)
        priced = (*entries_to_cells(plan, [e.median_ms for e in samples[:k]]),
                  table_spread_note(samples[:k], (), available_cpus()))
        wholes = samples[k:]
    table = assemble_table(space, profile, predictor, plan, *priced)
    rows = []
    for i, (arch, dep, whole) in enumerate(zip(archs, deployed, wholes, strict=True)):
        table_ms = table.arch_ms(dep)
        rows.append({"arch": i, "choices": " ".join(arch.choices), "table_ms": table_ms, "whole_ms": whole.median_ms,
                     "error_pct": table_error_pct(table_ms, whole.median_ms),
                     "whole_iqr_pct": PERCENT * whole.relative_iqr})
    return table, pd.DataFrame(rows)


def get_table(space: SearchSpace, profile: DeviceProfile | str, predictor: Predictor | None = None,
              rebuild: bool = False, progress: bool = True) -> LatencyTable:
    """Cached table; rebuilt when the space, the profile or the predictor version changed."""
    profile = load_profile(profile) if isinstance(profile, str) else profile
    predictor = predictor or resolve_predictor(profile)
    key = table_key(space, profile, predictor)
    path = cache_dir() / f"{space.name}-{profile.name}-{profile.pricing}-{key}.json"
    if path.is_file() and not rebuild:
        try:
            return LatencyTable.from_json(path.read_text())
        except (json.JSONDecodeError, KeyError):
            pass  # an unreadable cache entry is rebuilt
    table = build_table(space, profile, predictor, progress)
    atomic_write_text(path, table.to_json())
    return table


def run(cfg: DictConfig) -> int:
    """Print the table ``cfg`` names (``conf/tools/lut.yaml``); a bad value is one line on stderr, exit 2."""
    from search_spaces.spaces import get_space

    try:
        profile = load_profile(str(cfg.device), pricing=str(cfg.get("pricing", "device")))
        space = get_space(str(cfg.search_space))
        if not isinstance(cfg.rebuild, bool):  # Hydra reads true/false in any case as booleans
            raise ValueError(f"rebuild={cfg.rebuild} is invalid; valid: true, false")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = get_table(space, profile, rebuild=cfg.rebuild)
    lo, hi = table.range_ms()
    pd.set_option("display.width", 200)
    print(f"Latency table (ms) for space '{space.name}' on {profile.name} ({profile.description}), "
          f"input {'x'.join(map(str, profile.input_shape))}")
    print(f"predictor: {table.predictor} -- {table.provenance}" + (f"; {table.error_note}" if table.error_note else ""))
    print(table.pivot().to_string(float_format=lambda v: f"{v:.3f}"))
    print("fixed part:", ", ".join(f"{r.part} {r.latency_ms:.3f}" for r in table.fixed.itertuples()),
          f"= {table.fixed_ms:.3f} ms")
    print(f"space latency range: {lo:.3f} - {hi:.3f} ms")
    return 0


@hydra.main(version_base=None, config_path="pkg://conf.tools", config_name="lut")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
