"""Device profiles (``conf/device/<name>.yaml`` of the installed ``conf`` package) and their predictors.

A profile names its deployment input shape (batch included) and an ordered list of
backends ``kind:key``; the first available one is used:

* ``nnmeter:<predictor>`` -- nn-Meter's built-in predictor, only when its files are already
  in nn-Meter's data folder (never downloaded here);
* ``standin:<device>``    -- our calibrated stand-in (always available);
* ``measured:cpu``        -- timed on this machine (1 thread); ``measured:cuda[-<gpu>]`` -- timed with
  CUDA events when such a GPU is present.

A profile also carries a ``pricing`` (``device`` by default, or ``nnmeter``; :mod:`latency.standin`):
``nnmeter`` makes the stand-ins price only the kernels nn-Meter's predictor for the device would price, and
an ``nnmeter:`` backend skip the correction for the ops nn-Meter drops. Measured backends and the A100
roofline price every op under either pricing. A search chooses it with ``pricing=`` (conf/search.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from latency.base import Predictor

if TYPE_CHECKING:  # pragma: no cover
    from importlib.abc import Traversable


def device_conf_dir() -> Path | Traversable:
    """``conf/device`` of the ``conf`` package: the Hydra configs (``pkg://conf``) ship with the installed
    distribution, so profiles are read from the same files in a checkout, an editable install and a wheel."""
    try:
        return resources.files("conf") / "device"
    except ModuleNotFoundError as e:  # pragma: no cover - only with a broken install
        raise RuntimeError("QuadraNAS's configs (the 'conf' package) are not importable: install QuadraNAS "
                           "(pip install .) or run from the repository root") from e


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    input_shape: tuple[int, int, int, int]
    batch_size: int
    backends: tuple[str, ...]
    pricing: str = "device"

    def as_dict(self) -> dict:
        d = {"name": self.name, "description": self.description, "input_shape": list(self.input_shape),
             "batch_size": self.batch_size, "backends": list(self.backends)}
        if self.pricing != "device":  # device-priced tables keep the keys they had before pricings existed
            d["pricing"] = self.pricing
        return d

    def with_pricing(self, pricing: str) -> DeviceProfile:
        from dataclasses import replace

        from latency.standin import parse_pricing
        return replace(self, pricing=parse_pricing(pricing))


def profile_names(conf_dir: Path | Traversable | None = None) -> list[str]:
    conf_dir = device_conf_dir() if conf_dir is None else conf_dir
    return sorted(p.name[:-len(".yaml")] for p in conf_dir.iterdir() if p.name.endswith(".yaml") and p.is_file())


def profile_from_dict(d: dict) -> DeviceProfile:
    missing = {"name", "input_shape", "backends"} - set(d)
    if missing:
        raise ValueError(f"device profile is missing {sorted(missing)}")
    shape = tuple(int(v) for v in d["input_shape"])
    if len(shape) != 4:
        raise ValueError(f"device {d['name']}: input_shape must be [N, C, H, W], got {list(shape)}")
    batch = int(d.get("batch_size", shape[0]))
    shape = (batch, *shape[1:])
    backends = tuple(d["backends"])
    for b in backends:
        kind = b.split(":", 1)[0]
        if kind not in BACKEND_KINDS or ":" not in b:
            raise ValueError(f"device {d['name']}: unknown backend {b!r}; valid kinds: "
                             f"{', '.join(k + ':<key>' for k in BACKEND_KINDS)}")
    from latency.standin import parse_pricing
    pricing = parse_pricing(str(d.get("pricing", "device")))
    return DeviceProfile(d["name"], d.get("description", d["name"]), shape, batch, backends, pricing)


def load_profile(name: str, conf_dir: Path | Traversable | None = None, pricing: str | None = None
                 ) -> DeviceProfile:
    """The profile ``conf/device/<name>.yaml``, under ``pricing`` when given."""
    profile = _load_profile(name, conf_dir)
    return profile if pricing is None else profile.with_pricing(pricing)


def _load_profile(name: str, conf_dir: Path | Traversable | None = None) -> DeviceProfile:
    conf_dir = device_conf_dir() if conf_dir is None else conf_dir
    path = conf_dir / f"{name}.yaml"
    if "/" in name or "\\" in name or not path.is_file():
        raise ValueError(f"unknown device {name!r}; valid: {', '.join(profile_names(conf_dir))}")
    return profile_from_dict(yaml.safe_load(path.read_text()))


BACKEND_KINDS = ("nnmeter", "standin", "measured")
# The host's measured backend: untimed runs, then timed runs per measurement; a table splits the timed
# runs over interleaved passes (each with its warm-up) so that it can report how far passes differ, and so
# that a machine whose speed drifts moves every entry alike (experiments/results/host_additivity.md: with
# 2 passes the table's sum missed the whole network by more than 10% for up to half of 24 networks).
HOST_WARMUP = 2
HOST_REPEATS = 24
HOST_TABLE_PASSES = 4


def backend_available(spec: str) -> bool:
    kind, key = spec.split(":", 1)
    if kind == "nnmeter":
        from latency.nnmeter import builtin_available
        return builtin_available(key)
    if kind == "measured" and key.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            return False
        want = key.partition("-")[2]
        return not want or want.lower() in torch.cuda.get_device_name().lower()
    return True


def make_backend(spec: str, pricing: str = "device") -> Predictor:
    kind, key = spec.split(":", 1)
    if kind == "nnmeter":
        from latency.nnmeter import NNMeterPredictor
        return NNMeterPredictor(key, pricing=pricing)
    if kind == "standin":
        from latency.standin import ROOFLINE_DEVICES, load_standin
        return load_standin(key, pricing="device" if key in ROOFLINE_DEVICES else pricing)
    from latency.measured import MeasuredPredictor
    if key.startswith("cuda"):
        return MeasuredPredictor(device="cuda")
    # One thread: reproducible on a shared machine (two OpenMP threads on a busy 2-core host
    # quantise to scheduler time slices); the provenance names the thread count.
    return MeasuredPredictor(device="cpu", threads=1, warmup=HOST_WARMUP, repeats=HOST_REPEATS,
                             table_passes=HOST_TABLE_PASSES)


def resolve_predictor(profile: DeviceProfile) -> Predictor:
    """The first available backend of the profile."""
    for spec in profile.backends:
        if backend_available(spec):
            return make_backend(spec, profile.pricing)
    raise RuntimeError(f"device {profile.name}: none of its backends is available: {', '.join(profile.backends)}")
