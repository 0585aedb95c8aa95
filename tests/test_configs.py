"""Every real config composes, and every group option builds what it names."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from latency.profiles import load_profile, profile_from_dict, profile_names
from latency.units import parse_latency_ms
from search_spaces.spaces import space_from_config
from supernet.loss import LatencyLoss

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("device", "search_space", "dataset", "loss")}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_search_config_composes_with_every_option(group, option):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("search", overrides=[f"{group}={option}"])
    assert parse_latency_ms(cfg.latency) > 0
    profile_from_dict(OmegaConf.to_container(cfg.device))
    space = OmegaConf.to_container(cfg.search_space)
    space_from_config(space)
    loss = OmegaConf.to_container(cfg.loss)
    LatencyLoss(loss.pop("kind"), 30.0, **loss)


def test_device_profiles():
    assert profile_names() == ["cpu", "cuda", "gpu", "host", "vpu"]
    vpu = load_profile("vpu")
    assert vpu.input_shape == (1, 3, 224, 224) and vpu.backends[-1].startswith("standin:")
    with pytest.raises(ValueError, match="unknown device 'tpu'; valid: cpu, cuda, gpu, host, vpu"):
        load_profile("tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        profile_from_dict({"name": "x", "input_shape": [1, 3, 8, 8], "backends": ["magic:x"]})
