"""What a trainer run trains and the weights it starts from.

:func:`resolve_job` turns ``arch=PATH/arch.json`` or ``model=NAME`` (plus ``first_order``) into a
:class:`Job` at the dataset's input shape; :func:`initialise` applies ``init=`` to the built network:
``scratch``, ``supernet`` (the chosen paths of the search's supernet) or a ``net`` checkpoint of the
same architecture or of its first-order twin (quadratized).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from nas.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, load_state_dict_checked
from nas.data import DataInfo
from search_spaces.arch import Arch, ArchError, build_net
from search_spaces.blocks import parse_op
from search_spaces.quadranet import MODELS, quadranet_arch
from search_spaces.spaces import space_from_config, stem_stride_for


@dataclass
class Job:
    """One network to train: the trained architecture, where it came from, and notes on its adaptation."""

    arch: Arch  # exactly the network trained (first-order twin and dataset macro applied)
    source: Arch  # the architecture as given (arch.json or the registered model at the dataset shape)
    model: str | None = None  # registered model name, if any
    arch_path: str | None = None
    first_order: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = self.model or self.arch_path or self.arch.space
        return f"{name} (first-order twin)" if self.first_order else name


# -- what to train ------------------------------------------------------------------------
def first_order_twin(arch: Arch) -> Arch:
    """Every ``quadra_kK_eE`` op replaced by ``convnext_kK_eE`` (same block, plain depthwise conv)."""
    if not any(parse_op(c)[0] == "quadra" for c in arch.choices):
        raise ValueError(f"first_order=true needs an architecture with quadra_* ops; {arch.space!r} has "
                         f"{sorted(set(arch.choices))}")
    choices = tuple(c.replace("quadra_", "convnext_", 1) if c.startswith("quadra_") else c for c in arch.choices)
    return Arch(arch.space, arch.macro, choices, {"first_order_twin": True})


def adapt_macro(arch: Arch, info: DataInfo) -> tuple[Arch, str | None]:
    """The arch at the dataset's input shape and class count (stages and choices kept).

    When the input size changes, the stem stride becomes the one :func:`stem_stride_for` picks for the
    new size: a 224-pixel arch file (stem stride 4) on 28x28 images would otherwise shrink its maps to
    1x1 before the last stage.
    """
    m = arch.macro
    if tuple(m.input_shape) == tuple(info.input_shape) and m.num_classes == info.num_classes:
        return arch, None
    same_size = tuple(m.input_shape[1:]) == tuple(info.input_shape[1:])
    stem = m.stem_stride if same_size else stem_stride_for(info.input_shape)
    note = (f"architecture macro rebuilt for dataset {info.name}: input {list(m.input_shape)} -> "
            f"{list(info.input_shape)}, classes {m.num_classes} -> {info.num_classes}, stem stride "
            f"{m.stem_stride} -> {stem} (stages and choices kept)")
    macro = replace(m, input_shape=tuple(info.input_shape), num_classes=info.num_classes, stem_stride=stem)
    return replace(arch, macro=macro), note


def recorded_dataset(arch_path: str | Path) -> str | None:
    """The dataset an arch file was searched (or drawn) on, if it records one."""
    meta = Arch.load(arch_path).metadata
    search, config = meta.get("search") or {}, meta.get("config") or {}
    name = search.get("dataset") or (config.get("dataset") or {}).get("name")
    return str(name) if name else None


@torch.no_grad()
def check_runs(arch: Arch, label: str) -> None:
    """One forward at the architecture's own input shape, so that maps shrunk below a kernel (a 224-pixel
    stem stride on 28x28 images, say) fail here with the input and stride named, not in the first step."""
    shape, stride = tuple(arch.macro.input_shape), arch.macro.stem_stride
    try:
        with torch.random.fork_rng(devices=[]):  # the global RNG streams stay as they were
            build_net(arch).eval()(torch.zeros(1, *shape))
    except RuntimeError as e:
        advice = (f"at this input size use stem stride {stem_stride_for(shape)}" if stem_stride_for(shape) != stride
                  else "the input is too small for its downsampling: use a larger dataset.image_size")
        raise ArchError(f"{label}: the network does not run at input {list(shape)} with stem stride {stride} "
                        f"({str(e).splitlines()[0]}); {advice}") from None


def resolve_job(cfg: DictConfig, info: DataInfo) -> Job:
    """The network ``arch=`` or ``model=`` names, at the dataset's shape (first-order twin if asked)."""
    arch_path, model = cfg.get("arch"), cfg.get("model")
    if (arch_path is None) == (model is None):
        raise ValueError("pass exactly one of arch=PATH/arch.json or model=NAME "
                         f"(registered models: {', '.join(MODELS)})")
    if model is not None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
        stem = stem_stride_for(info.input_shape)
        source = quadranet_arch(model, input_shape=info.input_shape, num_classes=info.num_classes, stem_stride=stem)
        notes = []
    else:
        source = Arch.load(arch_path)
        source, note = adapt_macro(source, info)
        notes = [note] if note else []
    arch = first_order_twin(source) if cfg.first_order else source
    return Job(arch, source, model, str(arch_path) if arch_path is not None else None, bool(cfg.first_order), notes)


# -- initialisation ------------------------------------------------------------------------
@torch.no_grad()
def inherit_from_supernet(arch: Arch, net: nn.Module, supernet_checkpoint: Path) -> nn.Module:
    """Copy the chosen paths' weights (and stem/transitions/fixed layers/head) of a search's supernet.

    ``arch`` must be the search's exported architecture (its metadata holds the search config).
    Returns the loaded, pinned supernet (for comparisons).
    """
    from supernet.supernet import Supernet

    search_cfg = arch.metadata.get("config")
    if not isinstance(search_cfg, dict) or "search_space" not in search_cfg:
        raise ValueError("init=supernet needs an arch.json written by nas.search (its metadata.config holds the "
                         "search space); this one has none")
    state = load_checkpoint(supernet_checkpoint, kind="supernet")
    sp_cfg = search_cfg["search_space"]
    space = space_from_config(sp_cfg).with_input(arch.macro.input_shape, arch.macro.num_classes,
                                                 sp_cfg.get("train_stem_stride"))
    if space.macro != arch.macro:
        raise ValueError(f"init=supernet: the architecture's macro {arch.macro} is not the search's training "
                         f"macro {space.macro}; retrain on the search's dataset or use init=scratch")
    supernet = Supernet(space)
    load_state_dict_checked(supernet, state["model"])
    supernet.pin(arch.choices)
    for choice, mixed, layer in zip(arch.choices, supernet.mixed_ops(), net.searchable_layers(), strict=True):
        load_state_dict_checked(layer, mixed.candidates[mixed.names.index(choice)].state_dict())
    own = net.fixed_parts()
    theirs = supernet.net.fixed_parts()
    if set(own) != set(theirs):
        raise CheckpointError(f"fixed parts differ: network {sorted(own)}, supernet {sorted(theirs)}")
    for name, part in own.items():
        load_state_dict_checked(part, theirs[name].state_dict())
    return supernet


def eval_weights(state: dict) -> dict:
    """The weights a trainer checkpoint evaluates: the EMA ones when it kept an EMA."""
    return state["ema"] if state.get("ema") is not None else state["model"]


@torch.no_grad()
def quadratic_state_from(state: dict, arch: Arch, memory_saving: bool = False) -> tuple[dict, str]:
    """Weights for ``build_net(arch)`` from a ``net`` checkpoint of ``arch`` itself or of its first-order twin.

    A first-order twin is converted with :func:`search_spaces.convert.quadratize` (QuadraNet V2: the
    linear branch holds the trained depthwise weights, the quadratic term starts at zero), so the
    quadratic network starts out computing the first-order function.
    """
    from search_spaces.convert import quadratize

    try:
        theirs = Arch.from_dict(state["arch"])
    except (KeyError, ArchError) as e:
        raise CheckpointError(f"checkpoint holds no valid architecture: {e}") from e
    if theirs.macro != arch.macro:
        raise CheckpointError(f"init checkpoint's macro {theirs.macro} differs from the network's {arch.macro}")
    if theirs.choices == arch.choices:
        return eval_weights(state), "weights of the same architecture"
    twin = first_order_twin(arch) if any(c.startswith("quadra_") for c in arch.choices) else None
    if twin is None or theirs.choices != twin.choices:
        raise CheckpointError(f"init checkpoint's architecture {list(theirs.choices)} is neither this one nor its "
                              "first-order twin")
    net = build_net(theirs)
    load_state_dict_checked(net, eval_weights(state))
    n = quadratize(net, memory_saving)
    return net.state_dict(), f"quadratized first-order twin ({n} depthwise convs -> quadratic, quadratic term 0)"


def initialise(cfg: DictConfig, job: Job, net: nn.Module) -> str:
    """Load ``net``'s starting weights as ``init=`` says; returns how it was initialised (for logs and results)."""
    init = str(cfg.init)
    if init == "scratch":
        return "scratch"
    if init == "supernet":
        if job.arch_path is None or job.first_order:
            raise ValueError("init=supernet needs arch=PATH/arch.json from nas.search (and first_order=false)")
        if job.notes:
            raise ValueError("init=supernet needs the search's dataset shape; " + job.notes[0])
        path = Path(job.arch_path).parent / CHECKPOINT
        inherit_from_supernet(job.source, net, path)
        return f"supernet {path}"
    path = Path(init)
    if not path.is_file():
        raise FileNotFoundError(f"init={init}: no such file; valid: scratch, supernet or a checkpoint.pt of kind 'net'")
    weights, how = quadratic_state_from(load_checkpoint(path, kind="net"), job.arch, cfg.memory_saving)
    load_state_dict_checked(net, weights)
    return f"{path}: {how}"
