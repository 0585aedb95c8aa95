"""Checkpoints: self-describing (``kind``, ``config``, ``format_version``), atomic, resumable.

A checkpoint is a dict saved with ``torch.save`` and written with
:func:`search_spaces.io.atomic_write_bytes`, so a crash leaves the old file or the new one,
never half of one. Only plain data is allowed in it (dicts, lists, tuples, str, int, float,
bool, None, bytes, tensors, ``torch.Size``/``dtype``/``device``); numpy scalars are turned into
python numbers on save. That lets :func:`load_checkpoint` use ``torch.load(weights_only=True)``,
which cannot run code from the file. RNG states are kept in that form too (numpy's key as a tensor).

A file that cannot be read is an error (:class:`CheckpointError`), never a silent fresh start.
"""

from __future__ import annotations

import copy
import io
import os
import random
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from search_spaces.io import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"  # file name of a trainer run's checkpoint (and of a search's supernet)
CHECKPOINT_VERSION = 1
_LEAF_TYPES = (str, bytes, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device)
_MAX_LISTED = 5
# config keys that may differ when a run is resumed (they do not change the trained weights; a search's
# derivation only reads the trained supernet, so a finished supernet can be derived again another way)
RESUME_FREE = ("threads", "eval", "results_csv", "train.stop_after", "train.epochs", "derive", "keep_checkpoint",
               "accelerator", "precision", "channels_last",  # a run may move between devices; see device_change
               "quad_impl")  # the same maths in another kernel (equal up to float rounding)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, of another kind or version, or does not fit the network."""


def _plain(obj, where: str):
    """A copy of ``obj`` with numpy scalars as python numbers; TypeError naming the first other object."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _LEAF_TYPES):  # torch.Size is a tuple subclass: handled below
        return obj
    if isinstance(obj, Mapping):
        out = {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if isinstance(obj, OrderedDict):  # state_dict(): keep the type and its _metadata
            out = OrderedDict(out)
            if hasattr(obj, "_metadata"):
                out._metadata = obj._metadata
        return out
    if isinstance(obj, torch.Size):
        return obj
    if type(obj) in (list, tuple):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"checkpoint state{where}: {type(obj).__module__}.{type(obj).__qualname__} is not plain "
                    "data; keep checkpoints to dicts/lists/tuples/str/int/float/bool/None/tensors")


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` (needs ``"kind"`` str and ``"config"`` dict) atomically; adds ``format_version``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    kind = state.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"checkpoint state needs a 'kind' string (e.g. 'supernet', 'net'), got {kind!r}")
    if not isinstance(state.get("config"), Mapping):
        raise ValueError(f"checkpoint state needs a 'config' dict, got {state.get('config')!r}")
    data = _plain({**state, "format_version": CHECKPOINT_VERSION}, "")
    buf = io.BytesIO()
    torch.save(data, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    try:
        state = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path} is corrupt or not a QuadraNAS checkpoint ({len(raw)} bytes; "
                              f"{type(e).__name__}: {msg[:200]})") from e
    if not isinstance(state, dict) or not isinstance(state.get("kind"), str):
        what = type(state).__name__ if not isinstance(state, dict) else "a dict without 'kind'"
        raise CheckpointError(f"{path} is corrupt or not a QuadraNAS checkpoint (holds {what})")
    version = state.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} is corrupt or not a QuadraNAS checkpoint (format_version {version!r})")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format_version {version}, newer than this code supports "
                              f"({CHECKPOINT_VERSION}); update the code")
    if kind is not None and state["kind"] != kind:
        raise CheckpointError(f"{path} holds a {state['kind']!r} checkpoint, expected {kind!r}")
    return state


# -- RNG states ---------------------------------------------------------------------------
def rng_state() -> dict:
    """python ``random``, numpy global and torch (CPU, all CUDA devices) RNG states, as plain data."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_current"] = torch.cuda.get_rng_state()  # the stream of the GPU this process trains on
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured, so a resumed run continues the same random streams."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn("checkpoint has CUDA RNG states but CUDA is not available; not restored", stacklevel=2)
        elif len(cuda) != torch.cuda.device_count():
            warnings.warn(f"checkpoint has {len(cuda)} CUDA RNG states, this machine {torch.cuda.device_count()} "
                          "devices; restoring the common ones", stacklevel=2)
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.cpu(), i)
        else:
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        if torch.cuda.is_available() and state.get("cuda_current") is not None:
            # Under torchrun rank 0 writes the checkpoint: its entry for GPU r is the untouched seeded stream,
            # not rank r's. Every rank seeds alike and draws alike, so each continues from the stream of the
            # GPU the saving process trained on, restored onto the GPU this process trains on.
            torch.cuda.set_rng_state(state["cuda_current"].cpu())


def device_change(state: dict, device: torch.device, precision: str) -> str | None:
    """What a resume on ``device`` in ``precision`` changes against the checkpoint's own (None: nothing).
    Weights, optimizer state, data order and CPU random streams carry over between devices (tensors load
    with ``map_location``); the CUDA random streams (drop path on a GPU) only between CUDA runs."""
    saved_device, saved_precision = state.get("device", "cpu"), str(state.get("precision", "32"))
    changes = []
    if torch.device(saved_device).type != device.type:
        changes.append(f"it was written on {saved_device}, this run is on {device}: weights, optimizer state and data "
                       f"order carry over, the CUDA random streams do not, "
                       "so the run will not match an uninterrupted one bit for bit")
    if saved_precision != precision:
        changes.append(f"it trained in precision {saved_precision}, this run in {precision}")
    return "; ".join(changes) or None


def _as_tuple(obj):
    return tuple(_as_tuple(v) for v in obj) if isinstance(obj, (list, tuple)) else obj


# -- state dicts --------------------------------------------------------------------------
def _listed(items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_state_dict_checked(module: nn.Module, state_dict: Mapping) -> None:
    """Strict ``load_state_dict``; any mismatch is a CheckpointError listing the first offending keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)} in the network" for k in own
              if k in state_dict and hasattr(own[k], "shape") and hasattr(state_dict[k], "shape")
              and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_listed(shapes)}")
    if problems:
        raise CheckpointError("checkpoint does not match the network: " + "; ".join(problems))
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint does not match the network: {e}") from e


# -- the resume rule ----------------------------------------------------------------------
def _without(d: dict, dotted: tuple[str, ...]) -> dict:
    d = copy.deepcopy(d)
    for key in dotted:
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return d


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: dict, config: dict, path: Path, free: tuple[str, ...] = ()) -> None:
    """The one resume rule of search and retrain: configs may differ only in :data:`RESUME_FREE` (and ``free``,
    keys the caller checks another way)."""
    a, b = _flat(_without(saved, RESUME_FREE + free)), _flat(_without(config, RESUME_FREE + free))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise CheckpointError(f"{path} was written by a run with a different config (differs in: {', '.join(diff)}); "
                              "resume with the same overrides or use a new run folder")
