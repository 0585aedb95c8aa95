"""Architectures: the macro skeleton, one choice per searchable layer, JSON v1, build_net.

JSON format ``quadranas.arch/v1``::

    {"format": "quadranas.arch/v1", "space": "quadra",
     "macro": {"family": "quadra", "input_shape": [3, 224, 224], "num_classes": 1000,
               "stem_stride": 4, "stem_width": null, "head_width": null,
               "stages": [{"width": 32, "depth": 4, "stride": 1, "fixed_op": null}, ...]},
     "choices": ["quadra_k3_e2", "identity", ...],
     "metadata": {...free form...}}

Families (``quadra``, ``proxyless``): what the skeleton does differently per family (op grammar,
stem, transitions, head, init) is one registry entry each in :mod:`search_spaces.families`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from search_spaces.blocks import SKIP_OPS, make_op, parse_op
from search_spaces.families import FAMILIES, get_family
from search_spaces.io import atomic_write_text

FORMAT = "quadranas.arch/v1"


class ArchError(ValueError):
    """An architecture or its JSON is invalid; the message names the field and valid values."""


@dataclass(frozen=True)
class Stage:
    width: int
    depth: int
    stride: int = 1
    fixed_op: str | None = None  # a stage of one fixed op (not searched), e.g. ProxylessNAS' MBConv1


@dataclass(frozen=True)
class LayerSpec:
    index: int  # position among all layers (fixed ones included)
    stage: int
    in_ch: int
    out_ch: int
    stride: int
    fixed_op: str | None

    @property
    def shape_kept(self) -> bool:
        return self.in_ch == self.out_ch and self.stride == 1


@dataclass(frozen=True)
class Macro:
    family: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    stem_stride: int
    stages: tuple[Stage, ...]
    stem_width: int | None = None  # proxyless stem conv width (quadra: stages[0].width)
    head_width: int | None = None  # proxyless 1x1 conv before pooling

    def layers(self) -> list[LayerSpec]:
        out, prev, idx = [], self.stem_width or self.stages[0].width, 0
        reshapes = get_family(self.family).first_layer_reshapes
        for s, st in enumerate(self.stages):
            for j in range(st.depth):
                first = j == 0 and reshapes
                out.append(LayerSpec(idx, s, prev if first else st.width, st.width,
                                     st.stride if first else 1, st.fixed_op))
                idx += 1
            prev = st.width
        return out

    def searchable_layers(self) -> list[LayerSpec]:
        return [layer for layer in self.layers() if layer.fixed_op is None]


@dataclass(frozen=True)
class Arch:
    space: str
    macro: Macro
    choices: tuple[str, ...]
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        validate(self)

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        macro = asdict(self.macro)
        macro["input_shape"] = list(self.macro.input_shape)
        macro["stages"] = [asdict(st) for st in self.macro.stages]
        return {"format": FORMAT, "space": self.space, "macro": macro,
                "choices": list(self.choices), "metadata": self.metadata}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        return arch_from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> Arch:
        path = Path(path)
        if not path.is_file():
            raise ArchError(f"architecture file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            what = " (an ONNX model: pass the arch.json it was exported from)" if path.suffix == ".onnx" else ""
            raise ArchError(f"{path} is not an architecture JSON file: not UTF-8 text{what} (byte {e.start})") from e
        except json.JSONDecodeError as e:
            raise ArchError(f"{path} is not valid JSON: {e}") from e
        except OSError as e:
            raise ArchError(f"cannot read architecture file {path}: {e.strerror}") from e
        try:
            return arch_from_dict(d)
        except ArchError as e:
            raise ArchError(f"{path}: {e}") from e

    def with_metadata(self, **kv) -> Arch:
        return replace(self, metadata={**self.metadata, **kv})


# -- validation ---------------------------------------------------------------------------
def _need(d: dict, key: str, typ, where: str):
    if key not in d:
        raise ArchError(f"{where}: missing field {key!r}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool):
        raise ArchError(f"{where}.{key}: expected {getattr(typ, '__name__', typ)}, got {v!r}")
    return v


def _macro_from_dict(d: dict) -> Macro:
    if not isinstance(d, dict):
        raise ArchError(f"macro: expected an object, got {d!r}")
    family = _need(d, "family", str, "macro")
    shape = _need(d, "input_shape", list, "macro")
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ArchError(f"macro.input_shape: expected [C, H, W] positive ints, got {shape!r}")
    stages = []
    for i, s in enumerate(_need(d, "stages", list, "macro")):
        where = f"macro.stages[{i}]"
        if not isinstance(s, dict):
            raise ArchError(f"{where}: expected an object, got {s!r}")
        unknown = set(s) - {"width", "depth", "stride", "fixed_op"}
        if unknown:
            raise ArchError(f"{where}: unknown fields {sorted(unknown)}; valid: width, depth, stride, fixed_op")
        stages.append(Stage(_need(s, "width", int, where), _need(s, "depth", int, where),
                            _need(s, "stride", int, where), s.get("fixed_op")))
    unknown = set(d) - {f.name for f in Macro.__dataclass_fields__.values()}
    if unknown:
        raise ArchError(f"macro: unknown fields {sorted(unknown)}")
    return Macro(family, tuple(shape), _need(d, "num_classes", int, "macro"),
                 _need(d, "stem_stride", int, "macro"), tuple(stages),
                 d.get("stem_width"), d.get("head_width"))


def arch_from_dict(d: dict) -> Arch:
    if not isinstance(d, dict):
        raise ArchError(f"architecture JSON must be an object, got {type(d).__name__}")
    fmt = d.get("format")
    if fmt != FORMAT:
        raise ArchError(f"format: unknown version {fmt!r}; valid: {FORMAT!r}")
    unknown = set(d) - {"format", "space", "macro", "choices", "metadata"}
    if unknown:
        raise ArchError(f"unknown top-level fields {sorted(unknown)}; valid: space, macro, choices, metadata")
    choices = _need(d, "choices", list, "arch")
    meta = d.get("metadata", {})
    if not isinstance(meta, dict):
        raise ArchError(f"metadata: expected an object, got {meta!r}")
    return Arch(_need(d, "space", str, "arch"), _macro_from_dict(d["macro"]), tuple(choices), meta)


def valid_ops(macro: Macro, layer: LayerSpec) -> str:
    kinds = get_family(macro.family).op_kinds
    skip = ", identity/zero" if layer.shape_kept else " (identity/zero not allowed: shape changes here)"
    return " or ".join(f"{k}_k<odd>_e<int>" for k in kinds) + skip


def validate(arch: Arch) -> None:
    m = arch.macro
    if m.family not in FAMILIES:
        raise ArchError(f"macro.family: unknown {m.family!r}; valid: {', '.join(FAMILIES)}")
    if m.num_classes < 1 or m.stem_stride < 1:
        raise ArchError("macro.num_classes and macro.stem_stride must be >= 1")
    if not m.stages:
        raise ArchError("macro.stages: at least one stage is needed")
    for i, st in enumerate(m.stages):
        if st.width < 1 or st.depth < 0 or st.stride not in (1, 2):
            raise ArchError(f"macro.stages[{i}]: width >= 1, depth >= 0, stride 1 or 2; got {st}")
    layers = m.searchable_layers()
    if len(arch.choices) != len(layers):
        raise ArchError(f"choices: expected {len(layers)} (one per searchable layer), got {len(arch.choices)}")
    n = 0
    for layer in m.layers():
        if layer.fixed_op is not None:
            where, op = f"macro.stages[{layer.stage}].fixed_op", layer.fixed_op
        else:
            where, op, n = f"choices[{n}]", arch.choices[n], n + 1
        if not isinstance(op, str):
            raise ArchError(f"{where}: expected an op name, got {op!r}; valid: {valid_ops(m, layer)}")
        try:
            kind, k, _ = parse_op(op)
        except ValueError as e:
            raise ArchError(f"{where}: {e}") from None
        if kind in SKIP_OPS:
            if not layer.shape_kept:
                raise ArchError(f"{where}: {op!r} where the shape changes ({layer.in_ch}->{layer.out_ch}, "
                                f"stride {layer.stride}); valid: {valid_ops(m, layer)}")
        elif kind not in FAMILIES[m.family].op_kinds or k % 2 == 0:
            raise ArchError(f"{where}: {op!r} not valid in family {m.family!r}; valid: {valid_ops(m, layer)}")


# -- networks -----------------------------------------------------------------------------
LayerFn = Callable[[LayerSpec, float], nn.Module]


class Net(nn.Module):
    """Stem -> stages (transition + layers) -> head. ``layer_fn`` makes each layer."""

    def __init__(self, macro: Macro, layer_fn: LayerFn, drop_path_rate: float = 0.0):
        super().__init__()
        self.macro = macro
        family = get_family(macro.family)
        self.stem, w0 = family.stem(macro)
        specs = macro.layers()
        rates = torch.linspace(0, drop_path_rate, max(len(specs), 1)).tolist()
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        prev = w0
        for i, st in enumerate(macro.stages):
            self.transitions.append(family.transition(prev, st))
            stage_specs = [sp for sp in specs if sp.stage == i]
            self.stages.append(nn.ModuleList(layer_fn(sp, rates[sp.index]) for sp in stage_specs))
            prev = st.width
        self.head = family.head(macro, prev)

    def layers(self) -> list[nn.Module]:
        """All layers in order (fixed ones included)."""
        return [layer for stage in self.stages for layer in stage]

    def searchable_layers(self) -> list[nn.Module]:
        return [m for m, sp in zip(self.layers(), self.macro.layers()) if sp.fixed_op is None]

    def fixed_parts(self) -> dict[str, nn.Module]:
        """Everything that is not a searchable layer, by name (stem, transitions, fixed layers, head)."""
        parts: dict[str, nn.Module] = {"stem": self.stem}
        for i, t in enumerate(self.transitions):
            if not isinstance(t, nn.Identity):
                parts[f"transition{i}"] = t
        for m, sp in zip(self.layers(), self.macro.layers()):
            if sp.fixed_op is not None:
                parts[f"layer{sp.index}"] = m
        parts["head"] = self.head
        return parts

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return forward_stages(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def forward_stages(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Stem, then each stage's transition and layers: the pyramid of :class:`Net` and the fixed
    baseline models (``net.stem``, ``net.transitions``, ``net.stages``)."""
    x = net.stem(x)
    for transition, stage in zip(net.transitions, net.stages):
        x = transition(x)
        for layer in stage:
            x = layer(x)
    return x


def input_shapes(net: Net, batch: int = 1) -> dict[nn.Module, tuple[int, ...]]:
    """Input shape of every layer and fixed part, found by one traced forward."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    mods = [*net.layers(), *net.fixed_parts().values()]

    def record(mod: nn.Module, args: tuple) -> None:
        shapes.setdefault(mod, tuple(args[0].shape))

    hooks = [m.register_forward_pre_hook(record) for m in mods]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(batch, *net.macro.input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def build_net(arch: Arch, drop_path_rate: float = 0.0, memory_saving: bool = False) -> Net:
    """A plain ``nn.Module`` for ``arch``: no supernet machinery."""
    ops = iter(arch.choices)

    def layer_fn(spec: LayerSpec, dp: float) -> nn.Module:
        op = spec.fixed_op or next(ops)
        return make_op(op, spec.in_ch, spec.out_ch, spec.stride, dp, memory_saving)

    net = Net(arch.macro, layer_fn, drop_path_rate)
    get_family(arch.macro.family).init(net)
    return net
