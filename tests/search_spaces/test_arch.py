import json

import pytest
import torch

from search_spaces.arch import Arch, ArchError, build_net, input_shapes
from search_spaces.spaces import get_space


@pytest.fixture(params=["quadra", "proxyless"])
def space(request):
    return get_space(request.param)


def test_json_round_trip_is_identical(space, tmp_path):
    arch = space.random_arch(0).with_metadata(latency_ms={"vpu": 12.5}, note="x")
    path = arch.save(tmp_path / "a.json")
    text = path.read_text()
    again = Arch.load(path)
    assert again == arch and again.metadata == arch.metadata
    assert again.to_json() == text
    assert json.loads(text)["format"] == "quadranas.arch/v1"


def test_build_net_is_plain_module(space):
    arch = space.random_arch(1)
    net = build_net(arch)
    names = {type(m).__name__ for m in net.modules()}
    assert not any("Mixed" in n for n in names)
    assert net(torch.zeros(1, *arch.macro.input_shape)).shape == (1, 1000)


@pytest.mark.parametrize("hw", [28, 32])
def test_small_inputs(space, hw):
    s = space.with_input((1, hw, hw), 10, stem_stride=2 if space.name == "quadra" else 1)
    arch = s.largest_arch()
    net = build_net(arch, drop_path_rate=0.1).train()
    x = torch.randn(2, 1, hw, hw)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def _bad(arch: Arch, **changes) -> dict:
    d = arch.to_dict()
    for k, v in changes.items():
        d[k] = v
    return d


@pytest.mark.parametrize("change,match", [
    ({"format": "quadranas.arch/v9"}, "format: unknown version 'quadranas.arch/v9'; valid: 'quadranas.arch/v1'"),
    ({"choices": ["identity"] * 3}, "choices: expected 20"),
    ({"space": 3}, "arch.space: expected str"),
    ({"extra": 1}, "unknown top-level fields"),
])
def test_load_errors_name_the_field(change, match):
    arch = get_space("quadra").random_arch(0)
    with pytest.raises(ArchError, match=match):
        Arch.from_dict(_bad(arch, **change))


def test_unknown_op_lists_valid_values():
    d = get_space("quadra").random_arch(0).to_dict()
    d["choices"][3] = "sep_conv_3x3"
    with pytest.raises(ArchError, match=r"choices\[3\].*valid: quadra_k"):
        Arch.from_dict(d)
    d["choices"][3] = "mbconv_k3_e3"
    with pytest.raises(ArchError, match=r"choices\[3\]: 'mbconv_k3_e3' not valid in family 'quadra'"):
        Arch.from_dict(d)


def test_identity_where_shape_changes_is_rejected():
    space = get_space("proxyless")
    d = space.smallest_arch().to_dict()
    first = [i for i, lay in enumerate(space.layers()) if not lay.shape_kept][0]
    d["choices"][first] = "zero"
    with pytest.raises(ArchError, match=rf"choices\[{first}\]: 'zero' where the shape changes"):
        Arch.from_dict(d)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ArchError, match="not found"):
        Arch.load(tmp_path / "none.json")
    (tmp_path / "b.json").write_text("{oops")
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.load(tmp_path / "b.json")


def test_save_is_atomic(tmp_path, monkeypatch):
    arch = get_space("quadra").random_arch(0)
    path = arch.save(tmp_path / "a.json")
    before = path.read_text()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        get_space("quadra").random_arch(5).save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_input_shapes_cover_layers_and_fixed_parts():
    net = build_net(get_space("quadra").largest_arch())
    shapes = input_shapes(net)
    assert shapes[net.stem] == (1, 3, 224, 224)
    assert shapes[net.layers()[0]] == (1, 32, 56, 56)
    assert shapes[net.layers()[-1]] == (1, 256, 7, 7)
