"""What nn-Meter's built-in predictors price, as data (no ``nn_meter`` import).

* :data:`PREDICTOR_KERNELS` -- the regressors each built-in predictor ships, copied from nn-Meter 2.0's
  ``nn_meter/configs/predictors.yaml`` (``kernel_predictors``; nn-Meter, Microsoft, MIT). A detected kernel
  is priced only when its name (``predict_by_kernel.merge_conv_kernels`` + ``utils.get_kernel_name``) is in
  this list and ``extract_feature.get_predict_features`` builds features for it; everything else costs 0 ms.
* :data:`ASSUMED_FUSION_RULES` -- the fusion rules used for kernel detection here. The built-in
  ``fusion_rules.json`` ship only inside the predictor downloads, which these machines do not have, so this
  is a RECONSTRUCTION, not nn-Meter's file: the two-op rules the predictors' own kernel names imply
  (conv-bn-relu, dwconv-bn-relu, bnrelu, addrelu, fc-relu) and ``MON`` (multiple-outbound fusion) off, the
  rule set of nn-Meter's documentation examples. Multi-op patterns (se, hswish, channelshuffle, gap) come
  from nn-Meter's packaged ``fusion_lib`` and need no rule.
* :func:`nnmeter_kernel_name` -- nn-Meter's mapping from a fused op string to a regressor name.
"""

from __future__ import annotations

# nn_meter/configs/predictors.yaml (nn-Meter 2.0), kernel_predictors per built-in predictor.
PREDICTOR_KERNELS: dict[str, frozenset[str]] = {
    "cortexA76cpu_tflite21": frozenset({
        "conv-bn-relu", "dwconv-bn-relu", "fc", "global-avgpool", "hswish", "relu", "se", "split", "add",
        "addrelu", "maxpool", "avgpool", "bn", "bnrelu", "channelshuffle", "concat"}),
    "adreno640gpu_tflite21": frozenset({
        "conv-bn-relu", "dwconv-bn-relu", "hswish", "relu", "se", "maxpool", "avgpool", "bn", "bnrelu",
        "concat"}),
    "adreno630gpu_tflite21": frozenset({
        "conv-bn-relu", "dwconv-bn-relu", "hswish", "relu", "se", "maxpool", "avgpool", "bn", "bnrelu",
        "concat"}),
    "myriadvpu_openvino2019r2": frozenset({
        "conv-bn-relu", "dwconv-bn-relu", "fc", "hswish", "relu", "se", "addrelu", "maxpool", "avgpool", "bn",
        "bnrelu", "channelshuffle"}),
}

ASSUMED_FUSION_RULES: dict[str, dict[str, bool]] = {
    "BF_conv_bn": {"obey": True},
    "BF_conv_relu": {"obey": True},
    "BF_dwconv_bn": {"obey": True},
    "BF_dwconv_relu": {"obey": True},
    "BF_bn_relu": {"obey": True},
    "BF_add_relu": {"obey": True},
    "BF_fc_relu": {"obey": True},
    "MON": {"obey": False},
}


def nnmeter_kernel_name(op: str) -> str:
    """The regressor nn-Meter looks up for a detected kernel ``op`` (e.g. ``"dwconv-bn-relu"`` for
    ``"dwconv"``): ``merge_conv_kernels`` then ``get_kernel_name`` of nn-Meter 2.0, restated."""
    if "dwconv" in op:
        return "dwconv-bn-relu"
    if "conv" in op:
        return "conv-bn-relu"
    return {"fc-relu": "fc", "max-pool": "maxpool", "avg-pool": "avgpool", "global-pool": "global-avgpool",
            "gap": "global-avgpool", "channel_shuffle": "channelshuffle", "bn-relu": "bnrelu",
            "add-relu": "addrelu", "SE": "se", "SE-relu": "se", "se-relu": "se"}.get(op, op)


def priced_kernel_names(predictor: str) -> frozenset[str]:
    """The regressors of built-in ``predictor`` (one line naming the valid ones otherwise)."""
    try:
        return PREDICTOR_KERNELS[predictor]
    except KeyError:
        raise ValueError(f"unknown nn-Meter predictor {predictor!r}; valid: {', '.join(PREDICTOR_KERNELS)}") \
            from None
