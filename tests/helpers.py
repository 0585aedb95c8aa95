"""Helpers shared by tests."""

import torch
from hydra import compose, initialize_config_module
from torch import nn


def liven(net: nn.Module, seed: int = 0) -> nn.Module:
    """Make every branch matter: layer scales 1, quadratic terms and BatchNorm statistics non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "gamma" in name:
                p.fill_(1.0)
            elif "dwa" in name or "dwb" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


def scalar_tags(tb_dir) -> set[str]:
    """Every scalar tag in a run's TensorBoard folder (all its event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for events in sorted(tb_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def tool_cfg(name: str, *overrides: str):
    """The config ``python -m latency.<name> OVERRIDES`` runs with (``conf/tools/<name>.yaml``)."""
    with initialize_config_module("conf.tools", version_base=None):
        return compose(name, overrides=list(overrides))
