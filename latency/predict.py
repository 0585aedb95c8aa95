"""Latency of an exported architecture on every device profile, with provenance.

    python -m latency.predict arch=PATH/arch.json|MODEL [device=vpu|all] [format=table|json|csv] [per_layer=true]

For each profile: the lookup-table sum (what the search optimised) and the whole network
priced by the same backend at the profile's deployment shape. ``format=table`` (the default) prints
a table for people; ``format=json`` prints a JSON list of rows and ``format=csv`` a CSV with a header,
one row per device with the columns arch, device, table_ms, whole_net_ms, table_error_pct (the table's sum
against the whole network), predictor, provenance, error_note (table_ms and table_error_pct are null / empty
for an architecture outside every search space). ``per_layer=true`` prints the table's entries instead: one
row per layer (its op) and per fixed part, with their sum. A thin Hydra
app (``conf/tools/predict.yaml``; ``--help`` lists the options).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TextIO

import hydra
from omegaconf import DictConfig, OmegaConf

from latency.lut import deployment_space, get_table, table_error_pct
from latency.profiles import load_profile, profile_names, resolve_predictor
from search_spaces.arch import Arch, ArchError, build_net
from search_spaces.quadranet import MODELS, quadranet_arch
from search_spaces.spaces import in_space, space_of


def predict_rows(arch: Arch, devices: list[str]) -> list[dict]:
    space = space_of(arch)
    if space is not None and not in_space(arch, space):
        space = None  # ops the space does not offer: no table entries, the whole network is priced
    rows = []
    for name in devices:
        profile = load_profile(name)
        predictor = resolve_predictor(profile)
        if space is not None:
            dep = deployment_space(space, profile).arch(arch.choices)
            lut = get_table(space, profile, predictor, progress=False).latency(dep)
        else:
            from dataclasses import replace
            dep = replace(arch, macro=replace(arch.macro, input_shape=tuple(profile.input_shape[1:])))
            lut = None
        whole = predictor.module_ms(build_net(dep).eval(), profile.input_shape)
        rows.append({"device": name, "table_ms": lut.ms if lut else None, "whole_net_ms": whole.ms,
                     "table_error_pct": table_error_pct(lut.ms, whole.ms) if lut else None,
                     "predictor": whole.predictor, "provenance": whole.provenance, "error_note": whole.error_note})
    return rows


def per_layer_rows(arch: Arch, devices: list[str]) -> list[dict]:
    """The table's breakdown of ``arch`` on each device: one row per searchable layer (its op and table entry)
    and per fixed part (stem, transitions, head), the entries whose sum :func:`predict_rows` reports."""
    space = space_of(arch)
    if space is None or not in_space(arch, space):
        raise ValueError("per_layer=true needs an architecture of a search space (its table has the layers); "
                         "this one is priced only as a whole network")
    rows = []
    for name in devices:
        table = get_table(space, load_profile(name), progress=False)
        for layer, (ops, ms, op) in enumerate(zip(table.ops(), table.layer_ms(), arch.choices, strict=True)):
            rows.append({"device": name, "part": f"layer {layer}", "op": op, "ms": float(ms[ops.index(op)]),
                         "predictor": table.predictor})
        rows += [{"device": name, "part": r.part, "op": "fixed", "ms": float(r.latency_ms),
                  "predictor": table.predictor} for r in table.fixed.itertuples()]
    return rows


def write_layers(rows: list[dict], arch_path: str, fmt: str, out: TextIO) -> None:
    """``rows`` of :func:`per_layer_rows` in ``fmt``: per device a table with its sum, or JSON / CSV rows."""
    if fmt == "table":
        for device in dict.fromkeys(r["device"] for r in rows):
            mine = [r for r in rows if r["device"] == device]
            out.write(f"{arch_path} on {device} [{mine[0]['predictor']}], per table entry:\n")
            out.writelines(f"  {r['part']:14s} {r['op']:14s} {r['ms']:9.3f} ms\n" for r in mine)
            out.write(f"  {'sum':14s} {'':14s} {sum(r['ms'] for r in mine):9.3f} ms\n")
        return
    records = [{"arch": arch_path, **r} for r in rows]
    if fmt == "json":
        out.write(json.dumps(records, indent=2) + "\n")
    else:
        writer = csv.DictWriter(out, fieldnames=["arch", "device", "part", "op", "ms", "predictor"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


FORMATS = ("table", "json", "csv")  # the first is the default
COLUMNS = ("arch", "device", "table_ms", "whole_net_ms", "table_error_pct", "predictor", "provenance", "error_note")


def parse_format(value: str) -> str:
    """One of :data:`FORMATS`; anything else is a one-line error naming them."""
    if value not in FORMATS:
        raise ValueError(f"format={value} is invalid; valid: {', '.join(FORMATS)}")
    return value


def write_rows(rows: list[dict], arch_path: str, arch: Arch, fmt: str, out: TextIO) -> None:
    """``rows`` of :func:`predict_rows` in ``fmt``: a table for people, or JSON / CSV with :data:`COLUMNS`."""
    if fmt == "table":
        out.write(f"{arch_path}: {' '.join(arch.choices)}\n")
        for r in rows:
            table = (f"table {r['table_ms']:9.3f} ms ({r['table_error_pct']:+5.1f}% of the whole), "
                     if r["table_ms"] is not None else "")
            note = f"; {r['error_note']}" if r["error_note"] else ""
            out.write(f"  {r['device']:5s} {table}whole network {r['whole_net_ms']:9.3f} ms  "
                      f"[{r['predictor']}: {r['provenance']}{note}]\n")
        return
    records = [{"arch": arch_path, **{k: r[k] for k in COLUMNS if k != "arch"}} for r in rows]
    if fmt == "json":
        out.write(json.dumps(records, indent=2) + "\n")
    else:
        writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def load_arch(value: str) -> Arch:
    """``arch=``: an arch JSON file, or a registered model name (priced at its deployment shape)."""
    if value in MODELS:
        return quadranet_arch(value)
    if not Path(value).is_file():
        raise ArchError(f"arch={value}: no such file and not a registered model; valid: PATH/arch.json or one of "
                        f"{', '.join(MODELS)}")
    return Arch.load(value)


def run(cfg: DictConfig) -> int:
    """Print the rows ``cfg`` asks for (``conf/tools/predict.yaml``); a bad value is one line on stderr, exit 2."""
    try:
        if OmegaConf.is_missing(cfg, "arch"):
            raise ValueError("missing arch=PATH/arch.json")
        fmt = parse_format(str(cfg.format))
        arch = load_arch(str(cfg.arch))
        device = str(cfg.device)
        devices = profile_names() if device == "all" else [load_profile(device).name]
        layers = per_layer_rows(arch, devices) if cfg.per_layer else None
    except (ValueError, ArchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if layers is not None:
        write_layers(layers, str(cfg.arch), fmt, sys.stdout)
    else:
        write_rows(predict_rows(arch, devices), str(cfg.arch), arch, fmt, sys.stdout)
    return 0


@hydra.main(version_base=None, config_path="pkg://conf.tools", config_name="predict")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
