"""Evaluation and deployment report of a trained network.

:func:`report` writes ``results.json`` into the run folder (top-1, params and MACs at the training
and the deployment shape, predicted latency on every device profile, optional host timing and
``model.onnx``) and one row into a results CSV. :func:`evaluate_checkpoint` re-evaluates a saved
trainer checkpoint and reports it the same way (``nas.evaluate``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock
from omegaconf import DictConfig
from torch import nn

from nas import accelerator
from nas.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, load_state_dict_checked
from nas.config import RESULTS_KEY, check_config, results_csv_problem
from nas.data import DataInfo, dataset_config, load_data, make_loader, to_device
from nas.job import eval_weights
from nas.loops import evaluate, set_threads
from nas.runlock import run_folder
from search_spaces.arch import Arch, build_net
from search_spaces.families import get_family
from search_spaces.io import atomic_write_text
from search_spaces.quadranet import quadranet_arch
from search_spaces.spaces import SMALL_INPUT_SIDE, SearchSpace, in_space, space_of
from search_spaces.summary import count_macs, count_params, deployment

log = logging.getLogger("nas.report")

RESULTS = "results.json"
ONNX = "model.onnx"
DEPLOY_INPUT = (3, 224, 224)
DEPLOY_CLASSES = 1000


@dataclass(frozen=True)
class EvaluatedRun:
    """A trained network with its test metrics: everything :func:`report` writes up."""

    run_dir: Path  # the run folder: results.json and model.onnx go there
    net: nn.Module  # the network evaluated (the EMA copy when the run kept one)
    arch: Arch  # exactly the network trained
    source: Arch  # the architecture as given; decides the deployment shape
    model: str | None  # registered model name, if any
    info: DataInfo  # the dataset evaluated on
    test: dict  # evaluate()'s "top1" and "loss", plus "n" test images
    state: dict  # the trainer checkpoint (config, epoch, train_time_s, init, notes, ...)
    evaluated: str  # which weights were evaluated: "ema" or "model"


def deployment_arch(arch: Arch, source: Arch, model: str | None) -> tuple[Arch, SearchSpace | None, bool]:
    """The trained architecture at the deployment shape; its search space; whether its LUT applies."""
    space = space_of(source) if model is None else None
    if model is not None:
        macro = quadranet_arch(model).macro
    elif space is not None:
        macro = space.macro
    else:
        m = arch.macro
        deploy_stride = get_family(m.family).deploy_stem_stride
        small = max(m.input_shape[1:]) <= SMALL_INPUT_SIDE
        stem = deploy_stride if deploy_stride and small and m.stem_stride < deploy_stride else m.stem_stride
        macro = replace(m, input_shape=DEPLOY_INPUT, num_classes=DEPLOY_CLASSES, stem_stride=stem)
    dep = Arch(arch.space, macro, arch.choices)
    lut_ok = space is not None and in_space(arch, space)
    return dep, space, lut_ok


def profile_latency(name: str, dep: Arch, space: SearchSpace | None, lut_ok: bool) -> dict:
    """Predicted latency on one device profile with its provenance; errors are recorded, not raised."""
    from latency.lut import deployment_space, get_table, measured_whole
    from latency.profiles import load_profile, resolve_predictor

    out = {"ms": None, "predictor": None, "provenance": None, "error_note": None, "method": None,
           "input_shape": None, "error": None}
    try:
        profile = load_profile(name)
        out["input_shape"] = list(profile.input_shape)
        if lut_ok:
            table = get_table(space, profile, progress=False)
            at_profile = deployment_space(space, profile).arch(dep.choices)
            lat = table.latency(at_profile)
            out["method"] = "lookup table of the search space (sum of per-layer entries)"
            out.update(measured_whole(table, at_profile, profile))
        else:
            net_arch = replace(dep, macro=replace(dep.macro, input_shape=tuple(profile.input_shape[1:])))
            lat = resolve_predictor(profile).module_ms(build_net(net_arch).eval(), profile.input_shape)
            out["method"] = "whole network"
        out.update(ms=lat.ms, predictor=lat.predictor, provenance=lat.provenance, error_note=lat.error_note)
    except Exception as e:  # noqa: BLE001 - a missing backend must not lose the trained network's results
        out["error"] = f"{type(e).__name__}: {e}"
        log.warning("latency on %s not available: %s", name, out["error"])
    return out


def report(run: EvaluatedRun, eval_cfg: DictConfig, results_csv: str | None) -> dict:
    """Write ``results.json`` (and ``model.onnx``, a results-CSV row) for a trained network."""
    from latency.measured import MeasuredPredictor

    net, arch, info, test, state = run.net, run.arch, run.info, run.test, run.state
    # host timing, MACs and ONNX are about the deployed CPU graph, wherever the network trained
    net = net.to("cpu", memory_format=torch.contiguous_format).eval()
    shape = tuple(info.input_shape)
    dep, space, lut_ok = deployment_arch(arch, run.source, run.model)
    results = {
        "run_dir": str(Path(run.run_dir).resolve()),  # one spelling, so evaluate replaces retrain's row
        "model": run.model, "arch_path": state.get("arch_path"), "space": arch.space,
        "choices": list(arch.choices), "first_order": state.get("first_order", False), "init": state.get("init"),
        "notes": state.get("notes", []), "dataset": info.name, "num_test": test.get("n"),
        "top1": test["top1"], "test_loss": test["loss"], "evaluated_weights": run.evaluated,
        "epochs": state["epoch"] + 1, "train_time_s": state["train_time_s"], "world_size": state.get("world_size", 1),
        "params": count_params(net), "macs": count_macs(net, (1, *shape)), "input_shape": list(shape),
        "num_classes": info.num_classes,
        "deployment": {**deployment(dep), "search_space": space.name if space is not None else None, "lut": lut_ok},
        "latency_ms": {name: profile_latency(name, dep, space, lut_ok) for name in eval_cfg.profiles},
        "host_latency_ms": None, "onnx": None, "checkpoint": str(Path(run.run_dir) / CHECKPOINT),
        "arch": arch.to_dict(), "config": state["config"],
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if eval_cfg.host_latency:
        lat = MeasuredPredictor(threads=1, warmup=eval_cfg.latency_warmup,
                                repeats=eval_cfg.latency_repeats).module_ms(net, (1, *shape))
        results["host_latency_ms"] = {"ms": lat.ms, "predictor": lat.predictor, "provenance": lat.provenance,
                                      "error_note": lat.error_note, "input_shape": [1, *shape]}
    if eval_cfg.onnx:
        from nas.export import export_onnx
        results["onnx"] = export_onnx(net, shape, Path(run.run_dir) / ONNX)
    atomic_write_text(Path(run.run_dir) / RESULTS, json.dumps(results, indent=2, default=str) + "\n")
    if results_csv:
        append_results_row(Path(results_csv), results_row(results))
    log.info("%s", summary_text(results))
    return results


def results_row(r: dict) -> dict:
    """The results-CSV row of one ``results.json``."""
    row = {"run_dir": r["run_dir"], "model": r["model"] or r["arch_path"] or r["space"],
           "arch_path": str(Path(r["arch_path"]).resolve()) if r["arch_path"] else None,  # its search: nas.results
           "first_order": r["first_order"], "init": r["init"], "dataset": r["dataset"], "epochs": r["epochs"],
           "top1": r["top1"], "params": r["params"], "macs": r["macs"],
           "deploy_params": r["deployment"]["params"], "deploy_macs": r["deployment"]["macs"]}
    for name, lat in r["latency_ms"].items():
        row[f"latency_{name}_ms"] = lat["ms"]
    row["host_trained_ms"] = r["host_latency_ms"]["ms"] if r["host_latency_ms"] else None
    row["train_time_s"] = r["train_time_s"]
    row["evaluated_at"] = r["evaluated_at"]
    return row


def append_results_row(path: Path, row: dict, replace_existing: bool = True) -> Path:
    """Add one row, replacing an earlier row of the same run folder (or keeping it: ``replace_existing=False``).

    The file is rewritten atomically under a lock (``.<name>.lock``, removed on release). Rows already
    there are kept as written (read and written back as text); a file that is not a results CSV of
    ours is refused, never rewritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        problem = results_csv_problem(path)
        if problem:
            raise ValueError(f"results_csv={path} {problem}")
        old = (pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() and path.stat().st_size
               else pd.DataFrame(columns=[RESULTS_KEY]))
        key = str(row[RESULTS_KEY])
        if (old[RESULTS_KEY] == key).any():
            if not replace_existing:
                return path
            old = old[old[RESULTS_KEY] != key]
        new = pd.DataFrame([{k: "" if v is None else str(v) for k, v in row.items()}])
        df = new if old.empty else pd.concat([old, new], ignore_index=True)
        return atomic_write_text(path, df.to_csv(index=False))


def summary_text(r: dict) -> str:
    """The few lines a finished run logs: accuracy, size, latency per profile, where the outputs are."""
    from latency.lut import whole_note

    lines = [f"== {r['model'] or r['arch_path'] or r['space']}{' (first-order)' if r['first_order'] else ''} on "
             f"{r['dataset']}: top-1 {r['top1']:.4f} ({r['evaluated_weights']} weights, {r['epochs']} epochs, "
             f"{r['train_time_s']:.0f} s training) ==",
             f"{r['params'] / 1e6:.3f}M params, {r['macs'] / 1e6:.2f}M MACs at {'x'.join(map(str, r['input_shape']))}; "
             f"deployment {'x'.join(map(str, r['deployment']['input_shape']))}: "
             f"{r['deployment']['params'] / 1e6:.2f}M params, {r['deployment']['macs'] / 1e6:.0f}M MACs"]
    for name, lat in r["latency_ms"].items():
        if lat["ms"] is None:
            lines.append(f"  {name:5s} n/a ({lat['error']})")
        else:
            note = f"; {lat['error_note']}" if lat["error_note"] else ""
            lines.append(f"  {name:5s} {lat['ms']:9.3f} ms{whole_note(lat)}  [{lat['predictor']}: "
                         f"{lat['provenance']}{note}]")
    if r["host_latency_ms"]:
        h = r["host_latency_ms"]
        lines.append(f"  trained net on this host, batch 1: {h['ms']:.3f} ms [{h['predictor']}; {h['error_note']}]")
    lines.append(f"outputs in {r['run_dir']}: results.json checkpoint.pt" + (" model.onnx" if r["onnx"] else ""))
    return "\n".join(lines)


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Re-evaluate a trainer checkpoint (``cfg.checkpoint``); rewrites ``results.json`` next to it."""
    check_config(cfg, "evaluate")
    set_threads(cfg.threads)
    path = Path(cfg.checkpoint) if cfg.checkpoint is not None else None
    if path is None:
        raise ValueError("pass checkpoint=PATH/checkpoint.pt (written by nas.train / nas.retrain)")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; valid: checkpoint=PATH/checkpoint.pt written by nas.train "
                              "or nas.retrain")
    with run_folder(path.parent):  # results.json is rewritten there: not while a run writes the folder
        return _evaluate(cfg, path)


def _evaluate(cfg: DictConfig, path: Path) -> dict:
    state = load_checkpoint(path)
    if state["kind"] == "supernet":
        raise CheckpointError(f"{path} is a search's supernet, not a trained network; retrain its export first: "
                              f"python -m nas.retrain arch={path.parent / 'arch.json'}")
    if state["kind"] != "net":
        raise CheckpointError(f"{path} holds a {state['kind']!r} checkpoint, expected 'net'")
    try:
        arch = Arch.from_dict(state["arch"])
        source = Arch.from_dict(state.get("source_arch", state["arch"]))
    except KeyError as e:
        raise CheckpointError(f"{path} holds no architecture ({e})") from e
    data_cfg = dataset_config(cfg.dataset) if cfg.get("dataset") is not None else state["dataset"]
    _, test_set, info = load_data(data_cfg, with_train=False)
    if tuple(info.input_shape) != tuple(arch.macro.input_shape) or info.num_classes != arch.macro.num_classes:
        raise ValueError(f"dataset {info.name} gives {list(info.input_shape)} images of {info.num_classes} classes; "
                         f"the network takes {list(arch.macro.input_shape)} and {arch.macro.num_classes} classes")
    accel = accelerator.from_config(cfg)
    net = build_net(arch)
    load_state_dict_checked(net, eval_weights(state))
    (test_set,) = to_device((test_set,), accel.device)
    test = {**evaluate(accel.module(net), make_loader(test_set, cfg.eval.batch_size, False, 0), accel),
            "n": len(test_set)}
    evaluated = "ema" if state.get("ema") is not None else "model"
    return report(EvaluatedRun(path.parent, net, arch, source, state.get("model_name"), info, test, state, evaluated),
                  cfg.eval, cfg.results_csv)
