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
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from latency.base import Latency, Predictor
from latency.measured import MeasuredPredictor, TableEntry
from latency.profiles import DeviceProfile, load_profile, resolve_predictor
from search_spaces.arch import Arch, build_net, input_shapes
from search_spaces.blocks import SKIP_OPS, make_op
from search_spaces.io import atomic_write_text
from search_spaces.spaces import SearchSpace

LUT_VERSION = 1


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


def build_table(space: SearchSpace, profile: DeviceProfile, predictor: Predictor,
                progress: bool = True) -> LatencyTable:
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
    cells: list[tuple[int, str, tuple | None]] = []  # (layer, op, entry key; None = a skip op, 0 ms)
    for spec in dep.layers():
        shape = shapes[layer_modules[spec.index]]
        for op in dep.candidates(spec):
            key = None if op in SKIP_OPS else (op, spec.in_ch, spec.out_ch, spec.stride, shape)
            if key is not None and key not in entries:
                entries[key] = (f"layer {number[spec.index]} {op}",
                                make_op(op, spec.in_ch, spec.out_ch, spec.stride).eval(), shape)
            cells.append((spec.index, op, key))
    fixed_parts = skeleton.fixed_parts()
    for name, mod in fixed_parts.items():
        entries[("fixed", name)] = (f"{name} (fixed)", mod.eval(), shapes[mod])
    latencies, note = price_entries(predictor, list(entries.values()), progress, f"LUT {space.name}/{profile.name}")
    priced = dict(zip(entries, latencies, strict=True))
    layers = pd.DataFrame([{"layer": number[index], "op": op, "latency_ms": 0.0 if key is None else priced[key].ms}
                           for index, op, key in cells])
    fixed = pd.DataFrame([{"part": name, "latency_ms": priced[("fixed", name)].ms} for name in fixed_parts])
    return LatencyTable(space.name, profile.name, predictor.name, predictor.provenance, note,
                        table_key(space, profile, predictor), layers, fixed)


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
