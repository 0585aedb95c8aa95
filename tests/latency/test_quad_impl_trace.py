"""The latency cost model prices the deployed graph of a quadratic depthwise conv (three depthwise convs),
whichever implementation ``impl="auto"`` would pick in eager inference on the same input."""

import torch

from latency.kernels import summarize, trace_kernels
from search_spaces.quadratic import QuadDWConv2d


def test_auto_quad_dwconv_traces_as_three_dwconvs():
    conv = QuadDWConv2d(16, 5)
    with torch.no_grad():
        assert conv.uses_grouped(torch.zeros(1, 16, 10, 10))  # eager: small input, inference
    ks = trace_kernels(conv, (1, 16, 10, 10))
    counts = {t: d["count"] for t, d in summarize(ks).items()}
    assert counts["dwconv"] == 3 and "conv" not in counts
    assert summarize(ks)["dwconv"]["macs"] == 3 * 16 * 10 * 10 * 25
