"""Schemas of every entry point's config, checked before any work: types, allowed values, ranges.

Design. The YAML files in ``conf/`` stay the only place where defaults live, and Hydra composes
them exactly as before. The dataclasses below describe what each value may be (a type, an enum
of names, a range in the field's metadata) and carry no defaults (``MISSING``), except keys an
older config may lack. :func:`check_config` walks a composed config against the schema of its
entry point (``search``, ``retrain``, ``train``, ``evaluate``) and raises :class:`ConfigError`,
one line that names the key and its valid values, on the first bad value; then a few rules that
span keys (a search needs a search epoch, exactly one of ``arch``/``model``, a writable
``results_csv``). Group options whose keys differ (``loss``, ``search_space``, ``dataset``)
pick their schema by their ``kind``/``name`` (:data:`VARIANTS`).

The config the code runs with is never rewritten: a value is accepted only if it already has its
schema's type (``yes`` is not a boolean, ``"3"`` not an integer), so enums reach the code as
plain strings and the configs saved in checkpoints compare equal to those of older runs.
(Putting the schemas into the defaults lists would type-check at composition, but Hydra reports
those errors on several lines, and enum members would be pickled into checkpoints.)

When. Hydra creates the run folder before it calls the task function, so each entry config lists
:class:`CheckConfig` under ``hydra.callbacks``: its ``on_run_start`` runs right after composition
and exits with code 2 and ``error: <one line>`` before any folder, table or dataset exists. The
entry functions call :func:`check_config` again, for callers that compose configs themselves
(tests, experiments) and for multirun jobs, where the message goes through ``run_cli``.

The schemas are registered in Hydra's ConfigStore under root names (``search_schema``,
``dataset_schema``, ``loss_constraint_schema``, ...; :func:`register`), so they can be looked up
and composed like any config, e.g. ``compose("search_schema")`` lists every key with its type.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from latency.base import PRICINGS
from nas.accelerator import ACCELERATORS, PRECISIONS, AcceleratorUnavailable, check_accelerator, parse_precision
from search_spaces.quadranet import MODELS
from search_spaces.quadratic import IMPLS as QUAD_IMPLS
from search_spaces.spaces import SPACES
from supernet.loss import KINDS as LOSS_KINDS
from supernet.mixed import MODES
from supernet.supernet import WEIGHT_SAMPLINGS

DATASETS = ("fashion_mnist", "digits", "cifar10", "imagefolder")  # what nas.data can load
DATASETS_WITH_ROOT = ("cifar10", "imagefolder")  # no default location: dataset.root is required
WEIGHT_OPTIMIZERS = ("adamw", "sgd")
ARCH_OPTIMIZERS = ("adam", "sgd")
DERIVE_METHODS = ("select", "train", "naswot", "budgeted", "argmax")
INIT_WORDS = ("scratch", "supernet")  # retrain's init=, besides a checkpoint path
SKIPPED_KEYS = ("hydra",)  # Hydra's own node, present in the config a callback sees
USAGE_EXIT = 2  # exit code of a usage error (as nas.cli.run_cli)
DEPLOY_SHAPE_RANK = 4  # device input_shape: N, C, H, W
IMAGE_SHAPE_RANK = 3  # search-space input_shape: C, H, W
DEFAULT_FINALISTS = 8  # derive.finalists when a config predates the key
DEFAULT_TRAIN_EPOCHS = 1.0  # derive.train_epochs when a config predates the key


class ConfigError(ValueError):
    """A config value that would waste or break a run; the message is one line."""


def _enum(name: str, values: Sequence[str]) -> type[Enum]:
    """An enum whose member names are its values (OmegaConf and the check match strings by name)."""
    return Enum(name, {v: v for v in values})


Mode = _enum("Mode", MODES)
Sampling = _enum("Sampling", WEIGHT_SAMPLINGS)
LossKind = _enum("LossKind", LOSS_KINDS)
DatasetName = _enum("DatasetName", DATASETS)
SpaceName = _enum("SpaceName", tuple(SPACES))
ModelName = _enum("ModelName", tuple(MODELS))
WeightOptimizer = _enum("WeightOptimizer", WEIGHT_OPTIMIZERS)
ArchOptimizer = _enum("ArchOptimizer", ARCH_OPTIMIZERS)
DeriveMethod = _enum("DeriveMethod", DERIVE_METHODS)
AcceleratorName = _enum("AcceleratorName", ACCELERATORS)
QuadImpl = _enum("QuadImpl", QUAD_IMPLS)
Pricing = _enum("Pricing", PRICINGS)


# -- ranges and field helpers -------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """A closed or open interval; ``None`` is unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, lo_open=True)
UNIT = Range(0, 1)  # [0, 1]
UNIT_OPEN = Range(0, 1, lo_open=True, hi_open=True)  # (0, 1)
UNIT_RIGHT_OPEN = Range(0, 1, hi_open=True)  # [0, 1)
FLOAT32_MAX = 3.4028234663852886e38
LEARNING_RATE = Range(0, FLOAT32_MAX, lo_open=True)  # the optimizers hold it as a float32
SEED = Range(0, 2**32 - 1)  # numpy's seed range (random, numpy and torch are all seeded with it)
MAX_THREADS = 4 * (os.cpu_count() or 1)  # more threads than this only oversubscribe the cores
THREADS = Range(1, MAX_THREADS)
MAX_CANDIDATES = 1024  # derive.candidates: each is scored in the supernet (1024 take minutes on 2 cores)
CANDIDATES = Range(1, MAX_CANDIDATES)
THREADS_TEXT = f"null (all cores) or an integer in [1, {MAX_THREADS}] (4 per core of this machine)"


def opt(rng: Range | None = None, *, default: Any = MISSING, length: int | None = None,
        choices: Callable[[], Sequence[str]] | None = None, describe: str | None = None) -> Any:
    """A schema field: ``rng`` bounds numbers (each element of a list), ``length`` fixes a list's
    length, ``choices`` lists the valid strings at check time, ``describe`` replaces the generic text."""
    meta = {"range": rng, "length": length, "choices": choices, "describe": describe}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def section(schema: type) -> Any:
    """A nested block of keys (``train:``, ``eval:``, ...) that every config of the entry point has."""
    return field(default_factory=schema)


def device_names() -> list[str]:
    """Device profiles (``conf/device/*.yaml``)."""
    from latency.profiles import profile_names
    return profile_names()


# -- groups -------------------------------------------------------------------------------------
@dataclass
class DeviceConfig:
    """``conf/device/*.yaml``: a device profile."""

    name: str = opt()
    description: str = opt()
    input_shape: list[int] = opt(AT_LEAST_1, length=DEPLOY_SHAPE_RANK)
    batch_size: int = opt(AT_LEAST_1)
    backends: list[str] = opt()


@dataclass
class SearchSpaceConfig:
    """``conf/search_space/quadra.yaml`` (and the keys every space shares)."""

    name: SpaceName = opt()
    widths: list[int] = opt(AT_LEAST_1)
    depths: list[int] = opt(AT_LEAST_1)
    kernels: list[int] = opt(AT_LEAST_1)
    expansions: list[int] = opt(AT_LEAST_1)
    input_shape: list[int] = opt(AT_LEAST_1, length=IMAGE_SHAPE_RANK)
    num_classes: int = opt(AT_LEAST_1)
    stem_stride: int = opt(AT_LEAST_1)
    train_stem_stride: int | None = opt(AT_LEAST_1)


@dataclass
class ProxylessSpaceConfig(SearchSpaceConfig):
    """``conf/search_space/proxyless.yaml``: MBConv stages with their own strides."""

    strides: list[int] = opt(AT_LEAST_1)
    stem_width: int = opt(AT_LEAST_1)
    first_width: int = opt(AT_LEAST_1)
    head_width: int = opt(AT_LEAST_1)


@dataclass
class DatasetConfig:
    """``conf/dataset/*.yaml``; ``root: null`` is the dataset's default location."""

    name: DatasetName = opt()
    root: str | None = opt(describe="a folder path or null")
    image_size: int | None = opt(AT_LEAST_1)
    limit: int | None = opt(AT_LEAST_1)
    test_limit: int | None = opt(AT_LEAST_1)


@dataclass
class RootedDatasetConfig(DatasetConfig):
    """A dataset without a default location (:data:`DATASETS_WITH_ROOT`)."""

    root: str = opt(describe="the dataset's folder (dataset.root=PATH)")


@dataclass
class LossConfig:
    """``conf/loss/*.yaml``: the latency term; ``kind: none`` takes no parameters."""

    kind: LossKind = opt()


@dataclass
class ConstraintLossConfig(LossConfig):
    weight_init: float = opt(AT_LEAST_0)
    eta: float = opt(AT_LEAST_0)
    weight_max: float = opt(AT_LEAST_0)


@dataclass
class MulLogLossConfig(LossConfig):
    a: float = opt(POSITIVE)
    b: float = opt(AT_LEAST_0)


@dataclass
class AddLinearLossConfig(LossConfig):
    lam: float = opt(AT_LEAST_0)


# group schemas chosen by a key's value: base schema -> (key, {value: schema})
VARIANTS: dict[type, tuple[str, dict[str, type]]] = {
    LossConfig: ("kind", {"constraint": ConstraintLossConfig, "mul_log": MulLogLossConfig,
                          "add_linear": AddLinearLossConfig}),
    SearchSpaceConfig: ("name", {"proxyless": ProxylessSpaceConfig}),
    DatasetConfig: ("name", dict.fromkeys(DATASETS_WITH_ROOT, RootedDatasetConfig)),
}


# -- search -------------------------------------------------------------------------------------
@dataclass
class SearchTrainConfig:
    """``train:`` of conf/search.yaml: the supernet's weights."""

    batch_size: int = opt(AT_LEAST_1)
    warmup_epochs: int = opt(AT_LEAST_0)
    epochs: int = opt(AT_LEAST_0)
    optimizer: WeightOptimizer = opt()
    lr: float = opt(LEARNING_RATE)
    weight_decay: float = opt(AT_LEAST_0)
    momentum: float = opt(UNIT_OPEN)
    sampling: Sampling = opt()
    label_smoothing: float = opt(UNIT)
    grad_clip: float = opt(POSITIVE)
    drop_path: float = opt(UNIT_RIGHT_OPEN)
    layer_scale_init: float = opt(POSITIVE)
    val_fraction: float = opt(UNIT_OPEN)


@dataclass
class ArchStepConfig:
    """``arch:`` of conf/search.yaml: the architecture parameters' optimizer."""

    optimizer: ArchOptimizer = opt()
    lr: float = opt(LEARNING_RATE)
    every: int = opt(AT_LEAST_1)
    skip_first_joint_epoch: bool = opt()


@dataclass
class DeriveConfig:
    """``derive:`` of conf/search.yaml: how the exported architecture is picked."""

    method: DeriveMethod = opt()
    min_fraction: float = opt(UNIT)
    candidates: int = opt(CANDIDATES)
    eval_images: int = opt(AT_LEAST_1)
    finalists: int = opt(Range(0, MAX_CANDIDATES), default=DEFAULT_FINALISTS)
    train_epochs: float = opt(POSITIVE, default=DEFAULT_TRAIN_EPOCHS)
    jobs: Any = opt(default="auto", describe="auto or an integer >= 1")
    without_search: bool = opt()


@dataclass
class SearchConfig:
    """conf/search.yaml (``python -m nas.search``)."""

    device: DeviceConfig = opt()
    pricing: Pricing = opt(default=PRICINGS[0])
    search_space: SearchSpaceConfig = opt()
    dataset: DatasetConfig = opt()
    loss: LossConfig = opt()
    latency: Any = opt(describe="a latency with a unit, e.g. 30ms, 0.03s, 300us")
    seed: int = opt(SEED)
    mode: Mode = opt()
    log_devices: list[str] = opt(choices=device_names)
    threads: int | None = opt(THREADS, describe=THREADS_TEXT)
    accelerator: AcceleratorName = opt(default="auto")
    precision: Any = opt(default="32", describe=", ".join(PRECISIONS))
    channels_last: bool = opt(default=False)
    quad_impl: QuadImpl = opt(default="auto")
    results_csv: str | None = opt(describe="a CSV file path or null")
    keep_checkpoint: bool = opt(default=True)
    train: SearchTrainConfig = section(SearchTrainConfig)
    arch: ArchStepConfig = section(ArchStepConfig)
    derive: DeriveConfig = section(DeriveConfig)


@dataclass
class FrontConfig:
    devices: list[str] = opt(choices=device_names)
    targets: int = opt(Range(2, 64))


@dataclass
class DeriveEntryConfig(SearchConfig):
    """conf/derive.yaml (``python -m nas.derive``): a search's options and the supernet to derive from."""

    supernet: str = opt(describe="PATH: a finished search's run folder (arch.json and checkpoint.pt)")
    front: FrontConfig = section(FrontConfig)


# -- retrain, train, evaluate -----------------------------------------------------------------------
@dataclass
class RetrainTrainConfig:
    """``train:`` of conf/retrain.yaml."""

    epochs: int = opt(AT_LEAST_0)
    batch_size: int = opt(AT_LEAST_1)
    lr: float = opt(LEARNING_RATE)
    weight_decay: float = opt(AT_LEAST_0)
    warmup_epochs: float = opt(AT_LEAST_0)
    grad_clip: float = opt(POSITIVE)
    label_smoothing: float = opt(UNIT)
    drop_path: float = opt(UNIT_RIGHT_OPEN)
    ema_decay: float | None = opt(UNIT_OPEN)
    stop_after: int | None = opt(AT_LEAST_0)


@dataclass
class EvalConfig:
    """``eval:`` of conf/evaluate.yaml."""

    batch_size: int = opt(AT_LEAST_1)
    profiles: list[str] = opt(choices=device_names)
    host_latency: bool = opt()
    latency_warmup: int = opt(AT_LEAST_0)
    latency_repeats: int = opt(AT_LEAST_1)
    onnx: bool = opt()


@dataclass
class TrainEvalConfig(EvalConfig):
    """``eval:`` of conf/retrain.yaml: also a test top-1 after every epoch."""

    every_epoch: bool = opt()


@dataclass
class RetrainConfig:
    """conf/retrain.yaml (``nas.retrain``) and conf/train.yaml (``nas.train``), which extends it."""

    dataset: DatasetConfig = opt()
    arch: str | None = opt(describe="PATH/arch.json or null")
    model: ModelName | None = opt()
    first_order: bool = opt()
    init: str = opt(describe=f"{', '.join(INIT_WORDS)} or PATH/checkpoint.pt")
    seed: int = opt(SEED)
    threads: int | None = opt(THREADS, describe=THREADS_TEXT)
    accelerator: AcceleratorName = opt(default="auto")
    precision: Any = opt(default="32", describe=", ".join(PRECISIONS))
    channels_last: bool = opt(default=False)
    quad_impl: QuadImpl = opt(default="auto")
    memory_saving: bool = opt()
    results_csv: str | None = opt(describe="a CSV file path or null")
    train: RetrainTrainConfig = section(RetrainTrainConfig)
    eval: TrainEvalConfig = section(TrainEvalConfig)


@dataclass
class EvaluateConfig:
    """conf/evaluate.yaml (``nas.evaluate``); no ``dataset``: the checkpoint's."""

    dataset: DatasetConfig | None = opt(default=None)
    checkpoint: str | None = opt(describe="PATH/checkpoint.pt written by nas.train or nas.retrain")
    threads: int | None = opt(THREADS, describe=THREADS_TEXT)
    accelerator: AcceleratorName = opt(default="auto")
    precision: Any = opt(default="32", describe=", ".join(PRECISIONS))
    channels_last: bool = opt(default=False)

    results_csv: str | None = opt(describe="a CSV file path or null")
    eval: EvalConfig = section(EvalConfig)


SCHEMAS: dict[str, type] = {"search": SearchConfig, "derive": DeriveEntryConfig, "retrain": RetrainConfig,
                            "train": RetrainConfig, "evaluate": EvaluateConfig}
GROUP_SCHEMAS: dict[str, type] = {"device": DeviceConfig, "search_space": SearchSpaceConfig,
                                  "dataset": DatasetConfig, "loss": LossConfig}


def register(store: ConfigStore | None = None) -> None:
    """Store every schema in Hydra's ConfigStore: ``<entry>_schema``, ``<group>_schema`` and, for groups
    with variants, ``<group>_<option>_schema`` (root names, so they never show up as group options)."""
    store = ConfigStore.instance() if store is None else store
    for entry, schema in SCHEMAS.items():
        store.store(name=f"{entry}_schema", node=schema)
    for group, schema in GROUP_SCHEMAS.items():
        store.store(name=f"{group}_schema", node=schema)
        for option, variant in VARIANTS.get(schema, ("", {}))[1].items():
            store.store(name=f"{group}_{option}_schema", node=variant)


register()


# -- the check ----------------------------------------------------------------------------------
def check_config(cfg: DictConfig, entry: str) -> None:
    """Raise :class:`ConfigError` (one line) on the first value of ``cfg`` that ``entry``'s schema rejects,
    then on the rules that span keys. Touches no data and no table; reads ``results_csv`` if it exists."""
    if entry not in SCHEMAS:
        raise ValueError(f"unknown entry point {entry!r}; valid: {', '.join(SCHEMAS)}")
    _check_node(cfg, SCHEMAS[entry], "", "", skip=SKIPPED_KEYS)
    _accelerator_rules(cfg)
    if entry in ("search", "derive"):
        _search_rules(cfg)
        if entry == "derive":
            _derive_rules(cfg)
    elif entry in ("retrain", "train"):
        _retrain_rules(cfg)
    else:
        _evaluate_rules(cfg)
    check_results_csv(cfg.results_csv)


def _accelerator_rules(cfg: DictConfig) -> None:
    """``precision`` is one of :data:`PRECISIONS` (Hydra reads ``precision=16`` as a number); ``cuda`` needs CUDA."""
    try:
        parse_precision(cfg.get("precision", "32"))
        check_accelerator(cfg.get("accelerator", "auto"))
    except AcceleratorUnavailable as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _search_rules(cfg: DictConfig) -> None:
    from latency.profiles import profile_from_dict
    from latency.units import parse_budgets
    try:
        budgets = parse_budgets(cfg.latency, cfg.device.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    unknown = [name for name in budgets if name != cfg.device.name and name not in device_names()]
    if unknown:
        raise ConfigError(f"latency: unknown device {unknown[0]!r}; valid: {', '.join(device_names())}")
    try:  # a user's own profile (hydra.searchpath) is checked here, not after the search trained
        profile_from_dict(OmegaConf.to_container(cfg.device, resolve=True))
    except ValueError as e:
        raise ConfigError(f"device={cfg.device.name}: {e}") from None
    if cfg.train.epochs < 1 and not cfg.derive.without_search:
        raise ConfigError(f"train.epochs={cfg.train.epochs} is invalid for a search; valid: an integer >= 1 (search "
                          "epochs after the warm-up), or derive.without_search=true to export without searching")
    finalists = cfg.derive.get("finalists", DEFAULT_FINALISTS)
    if cfg.derive.method == "train" and finalists < 1:
        raise ConfigError(f"derive.finalists={finalists} is invalid for derive.method=train; valid: an "
                          "integer >= 1 (the candidates trained standalone)")
    jobs = cfg.derive.get("jobs", "auto")
    if jobs != "auto" and not (isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1):
        raise ConfigError(f"derive.jobs={jobs} is invalid; valid: auto or an integer >= 1")


def _derive_rules(cfg: DictConfig) -> None:
    """The supernet's folder holds a finished search and its trained supernet."""
    folder = Path(cfg.supernet)
    if not (folder / "arch.json").is_file():
        raise ConfigError(f"supernet={cfg.supernet} is invalid: no finished search there (no arch.json); valid: "
                          "the run folder of a finished nas.search")
    if not (folder / "checkpoint.pt").is_file():
        raise ConfigError(f"supernet={cfg.supernet} is invalid: its checkpoint.pt is gone (keep_checkpoint=false); "
                          "valid: the run folder of a search run with keep_checkpoint=true")


def _retrain_rules(cfg: DictConfig) -> None:
    if (cfg.arch is None) == (cfg.model is None):
        raise ConfigError("pass exactly one of arch=PATH/arch.json or model=NAME "
                          f"(registered models: {', '.join(MODELS)})")
    if cfg.arch is not None and not Path(cfg.arch).is_file():
        raise ConfigError(f"arch={cfg.arch} is invalid: no such file; valid: PATH/arch.json")
    if cfg.arch is not None:
        from search_spaces.arch import Arch, ArchError
        try:
            Arch.load(cfg.arch)  # its contents too: a broken file fails before the run folder exists
        except ArchError as e:
            raise ConfigError(f"arch: {e}") from None
    if cfg.init not in INIT_WORDS and not Path(cfg.init).is_file():
        raise ConfigError(f"init={cfg.init} is invalid: no such file; valid: {', '.join(INIT_WORDS)} "
                          "or PATH/checkpoint.pt")


def _evaluate_rules(cfg: DictConfig) -> None:
    if cfg.checkpoint is None:
        raise ConfigError("checkpoint is required; valid: PATH/checkpoint.pt written by nas.train or nas.retrain")


RESULTS_KEY = "run_dir"  # first column of every results CSV QuadraNAS writes (one row per run folder)


def check_results_csv(value: str | None) -> None:
    """``results_csv`` must be a file we can append to later: not a folder, under a writable folder, and
    (if it exists) a results CSV of ours, never someone else's file to be rewritten."""
    if not value:
        return
    path = Path(value)
    valid = "valid: a CSV file path (created if absent) or null"
    if path.is_dir():
        raise ConfigError(f"results_csv={value} is a folder; {valid}")
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not folder.is_dir():
        raise ConfigError(f"results_csv={value} is invalid: {folder} is not a folder; {valid}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"results_csv={value} is invalid: {folder} is not writable; {valid}")
    problem = results_csv_problem(path)
    if problem:
        raise ConfigError(f"results_csv={value} {problem}; valid: a results CSV written by QuadraNAS, a new file "
                          "path or null")


def results_csv_problem(path: Path) -> str | None:
    """Why ``path`` is not a results CSV we may rewrite (None if it is ours, empty or absent)."""
    if not path.is_file() or not path.stat().st_size:
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f, strict=True)
            header = next(rows, [])
            for row in rows:
                if len(row) > len(header):
                    return f"is not a CSV table (line {rows.line_num} has {len(row)} fields, the header {len(header)})"
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return f"is not a CSV table ({type(e).__name__}: {e})"
    if header[:1] != [RESULTS_KEY]:
        return (f"is not a QuadraNAS results CSV (its header starts {','.join(header[:3])!r}, ours with "
                f"{RESULTS_KEY!r}); it is left as it is")
    return None


# -- the walk -----------------------------------------------------------------------------------
def _check_node(node: Any, schema: type, key: str, context: str, skip: Sequence[str] = ()) -> None:
    """``node`` (a config mapping) against dataclass ``schema``; ``key`` is its dotted path with a trailing dot."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{key.rstrip('.')}={_show(node)} is invalid; valid: a group of options")
    schema, context = _variant(node, schema, key, context)
    hints = typing.get_type_hints(schema)
    names = [f.name for f in fields(schema)]
    for name in node:
        if name not in names and name not in skip:
            raise ConfigError(f"{key}{name} is not an option{context}; valid: {', '.join(names)}")
    for f in fields(schema):
        full = key + f.name
        absent = f.name not in node.keys()  # a key an older config lacks: fine if the schema has a default
        if OmegaConf.is_missing(node, f.name) if not absent else f.default in (NO_DEFAULT, MISSING):
            raise ConfigError(f"{full} is required{context}; valid: "
                              f"{_describe(_strip_optional(hints[f.name]), f.metadata)}")
        if absent:
            continue
        _check_value(node[f.name], hints[f.name], f.metadata, full, context)


def _variant(node: DictConfig, schema: type, key: str, context: str) -> tuple[type, str]:
    """The schema of a group option whose keys depend on its ``kind``/``name`` value."""
    if schema not in VARIANTS:
        return schema, context
    selector, options = VARIANTS[schema]
    if selector not in node.keys() or OmegaConf.is_missing(node, selector):
        raise ConfigError(f"{key}{selector} is required; valid: {_describe(typing.get_type_hints(schema)[selector])}")
    value = node[selector]
    _check_value(value, typing.get_type_hints(schema)[selector], {}, key + selector, context)
    return options.get(value, schema), f" for {key}{selector}={value}"


def _check_value(value: Any, tp: Any, meta: dict, key: str, context: str) -> None:
    """One value against its annotation ``tp`` and field metadata ``meta``."""
    if value is None:
        if _is_optional(tp):
            return
        raise ConfigError(f"{key}=null is invalid{context}; valid: {_describe(tp, meta)}")
    declared, tp = tp, _strip_optional(tp)
    if is_dataclass(tp):
        _check_node(value, tp, key + ".", context)
        return
    if typing.get_origin(tp) is list:
        if not isinstance(value, ListConfig) or meta.get("length") not in (None, len(value)):
            raise ConfigError(f"{key}={_show(value)} is invalid{context}; valid: {_describe(declared, meta)}")
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            _check_value(v, item, {**meta, "length": None}, f"{key}[{i}]", context)
        return
    if not _has_type(value, tp) or not _in_range(value, meta) or not _in_choices(value, meta):
        raise ConfigError(f"{key}={_show(value)} is invalid{context}; valid: {_describe(declared, meta)}")


def _has_type(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    if isinstance(tp, type) and issubclass(tp, Enum):
        return isinstance(value, str) and value in tp.__members__
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, tp)


def _in_range(value: Any, meta: dict) -> bool:
    rng = meta.get("range")
    return rng is None or rng.holds(value)


def _in_choices(value: Any, meta: dict) -> bool:
    choices = meta.get("choices")
    return choices is None or value in choices()


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if _is_optional(tp):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner
    return tp


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "true or false")}


def _describe(tp: Any, meta: dict | None = None, plural: bool = False) -> str:
    """What a field accepts, e.g. ``an integer >= 1``, ``two, full_v2, full``, ``a list of 4 integers >= 1``."""
    meta = meta or {}
    if "describe" in meta:
        return meta["describe"]
    if _is_optional(tp):
        return _describe(_strip_optional(tp), meta, plural) + " or null"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        n = meta.get("length")
        return f"a list of {f'{n} ' if n else ''}{_describe(item, {**meta, 'length': None}, plural=True)}"
    if meta.get("choices") is not None:
        return ", ".join(meta["choices"]())
    if isinstance(tp, type) and issubclass(tp, Enum):
        return ("one of " if plural else "") + ", ".join(tp.__members__)
    if is_dataclass(tp):
        return "a group of options"
    noun = _NOUNS.get(tp, ("a value", "values"))[plural]
    rng = meta.get("range")
    return f"{noun} {rng}" if rng is not None else noun


def _show(value: Any) -> str:
    """A value as it is written on the command line."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and _looks_typed(value):
        return repr(value)  # a string that reads like a number, a boolean or null: quoted, as Hydra needs it
    return str(value)


def _looks_typed(text: str) -> bool:
    if text.strip().lower() in ("", "true", "false", "null"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- Hydra glue -----------------------------------------------------------------------------------
_PATH_UNSAFE = str.maketrans({"[": "", "]": "", "'": "", '"': "", " ": "", "/": "_"})


def path_safe(name: str) -> str:
    """A sweep's ``override_dirname`` as one folder name: no brackets, quotes, spaces or slashes
    (``search_space.kernels=[3,5],latency=20ms`` -> ``search_space.kernels=3-5,latency=20ms``)."""
    out = []
    for part in name.split(","):
        if "=" not in part and out:  # the tail of a list value split at its commas
            out[-1] += "-" + part
        else:
            out.append(part)
    return ",".join(p.translate(_PATH_UNSAFE) for p in out)


def latency_name(value: Any) -> str:
    """``latency=`` in a folder name: ``30ms`` as it is, budgets on several devices as ``vpu30ms-cpu25ms``."""
    if isinstance(value, str):
        return value.translate(_PATH_UNSAFE)
    return "-".join(str(v).replace(":", "") for v in value).translate(_PATH_UNSAFE)


class CheckConfig(Callback):
    """Hydra callback (``hydra.callbacks.check_config``): check the composed config before the run folder
    is created; on a bad value print ``error: ...`` and exit with :data:`USAGE_EXIT`."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        # Hydra makes this callback before any run or sweep folder: the configs' folder names can use them
        if not OmegaConf.has_resolver("path_safe"):
            OmegaConf.register_new_resolver("path_safe", path_safe)
        if not OmegaConf.has_resolver("latency_name"):
            OmegaConf.register_new_resolver("latency_name", latency_name)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_config(config, self.entry)
        except ConfigError as e:
            _exit_usage(e)
        self._hold(OmegaConf.select(config, "hydra.run.dir"))  # before Hydra writes .hydra/ and the log there

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._hold(config.hydra.runtime.output_dir)  # a multirun job's folder (a no-op in a single run)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.entry != "evaluate":
            from nas.runlock import release
            release(config.hydra.runtime.output_dir)

    def _hold(self, run_dir: str | None) -> None:
        """One writer per run folder (:mod:`nas.runlock`); ``nas.evaluate`` locks the checkpoint's folder instead."""
        from nas.runlock import RunFolderError, hold
        if self.entry == "evaluate" or run_dir is None:  # a config composed without Hydra's node: no folder
            return
        try:
            hold(run_dir)
        except RunFolderError as e:
            _exit_usage(e)


def _exit_usage(e: Exception) -> None:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT) from None
