"""latency.nb201: the NAS-Bench-201 networks nn-Meter measured, as the devices ran them (constant-folded)."""

import pandas as pd
import pytest

from latency.kernels import total_macs, trace_kernels
from latency.nb201 import (
    INPUT_SHAPE,
    build_nb201,
    fold_cell,
    measured_csv,
    op_mix,
    parse_arch,
    read_measured,
)

ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ROW_16 = "|skip_connect~0|+|skip_connect~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"  # id 16
ZERO_NODE = "|nor_conv_1x1~0|+|none~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
DEAD_NODES = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"

# MACs by hand (batch 1, C = 16, input 3x32x32; a conv's MACs = Hout * Wout * Cout * Cin * k * k):
#   stem 3x3 3->16 at 32x32:                   32*32*16*3*9   =   442,368
#   reduction 16->32: 3x3 s2 at 16x16          16*16*32*16*9  = 1,179,648
#                     3x3 32->32 at 16x16      16*16*32*32*9  = 2,359,296
#                     shortcut 1x1 at 16x16    16*16*32*16    =   131,072
#   reduction 32->64: 8*8*64*32*9 + 8*8*64*64*9 + 8*8*64*32    = 1,179,648 + 2,359,296 + 131,072
#   head fc 64 -> 10:                                               640
#   fixed part = 442,368 + 2 * 3,670,016 + 640                  = 7,783,040
# a cell's 3x3 conv costs 32*32*16*16*9 = 16*16*32*32*9 = 8*8*64*64*9 = 2,359,296 at every stage, a 1x1 conv
# 262,144; 15 cells (3 stages x N = 5).
FIXED_MACS = 7_783_040
CONV3, CONV1 = 2_359_296, 262_144


@pytest.mark.parametrize(("arch", "macs"), [
    (ALL_3X3, FIXED_MACS + 15 * 6 * CONV3),  # 220,119,680: nothing folds
    (ROW_16, FIXED_MACS + 15 * 2 * CONV3),  # 78,561,920: the none edge and its add fold away
    (ZERO_NODE, FIXED_MACS + 15 * (CONV1 + CONV3)),  # 47,104,640: node 2 is zero, its 3x3 edge to node 3 vanishes
    (DEAD_NODES, FIXED_MACS),  # the cell is the identity: nodes 1 and 2 no longer reach the output
])
def test_folded_network_macs(arch, macs):
    assert total_macs(trace_kernels(build_nb201(arch), INPUT_SHAPE)) == macs


def test_shapes_of_the_measured_network():
    ks = trace_kernels(build_nb201(ALL_3X3), INPUT_SHAPE)
    convs = [k for k in ks if k.type == "conv"]
    assert convs[0].input_shape == (1, 3, 32, 32) and convs[0].output_shape == (1, 16, 32, 32)
    outs = [k.output_shape for k in convs]
    assert outs.count((1, 16, 32, 32)) == 1 + 5 * 6 and outs.count((1, 32, 16, 16)) == 5 * 6 + 3
    assert outs.count((1, 64, 8, 8)) == 5 * 6 + 3
    assert [(k.input_shape, k.output_shape) for k in ks if k.type == "fc"] == [((1, 64), (1, 10))]
    pools = [k for k in ks if k.type == "pool"]  # the two reduction shortcuts
    assert [(p.kernel_size, p.stride, p.output_shape) for p in pools] == [(2, 2, (1, 16, 16, 16)),
                                                                          (2, 2, (1, 32, 8, 8))]
    assert sum(k.type == "add" for k in ks) == 15 * 3 + 2  # node 2 and node 3 sums, reduction adds
    assert build_nb201(ALL_3X3)(__import__("torch").zeros(INPUT_SHAPE)).shape == (1, 10)


def test_fold_cell():
    assert fold_cell(parse_arch(ROW_16)).edges == ((0, 1, "skip_connect"), (0, 2, "skip_connect"),
                                                   (1, 2, "nor_conv_3x3"), (0, 3, "skip_connect"),
                                                   (2, 3, "nor_conv_3x3"))
    assert fold_cell(parse_arch(ZERO_NODE)).edges == ((0, 1, "nor_conv_1x1"), (0, 3, "avg_pool_3x3"),
                                                      (1, 3, "nor_conv_3x3"))
    assert fold_cell(parse_arch(DEAD_NODES)).edges == ((0, 3, "skip_connect"),)
    assert op_mix(ZERO_NODE) == "3x3:1 1x1:1 pool:1 skip:0"
    with pytest.raises(ValueError, match="constant"):
        fold_cell(parse_arch("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"))


def test_parse_arch_rejects_malformed_strings():
    assert parse_arch(ROW_16)[2] == "nor_conv_3x3"
    for bad in ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "|none~0|+|none~0|",
                "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|"):
        with pytest.raises(ValueError):
            parse_arch(bad)


def test_packaged_measurements_are_the_even_half(tmp_path, monkeypatch):
    for dev in ("cpu", "vpu"):
        df = read_measured(dev)
        assert len(df) == 1007 and (df["id"] % 2 == 0).all() and (df["measured_ms"] > 0).all()
        assert set(df[["C", "N", "num_classes"]].drop_duplicates().itertuples(index=False, name=None)) == {(16, 5, 10)}
    with pytest.raises(ValueError, match="valid: cpu, vpu"):
        measured_csv("gpu")
    odd = tmp_path / "odd.csv"
    pd.DataFrame({"id": [3], "arch_str": [ROW_16], "C": [16], "N": [5], "num_classes": [10],
                  "measured_ms": [1.0]}).to_csv(odd, index=False)
    monkeypatch.setattr("latency.nb201.measured_csv", lambda device: odd)
    with pytest.raises(ValueError, match="held-back"):
        read_measured("cpu")
