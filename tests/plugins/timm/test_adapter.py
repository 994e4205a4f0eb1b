"""The timm adapter on tiny timm models built offline: discovery, the term, BatchNorm, R4F."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import rxf_timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

import rxf
from rxf.errors import RXFError

timm = pytest.importorskip("timm")

SMALL_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
# name -> (timm model, keyword arguments, embedding path, head path)
FAMILIES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "vit": ("vit_tiny_patch16_224", SMALL_VIT, "patch_embed", "head"),
    "deit": ("deit_tiny_patch16_224", SMALL_VIT, "patch_embed", "head"),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {
            "img_size": 32,
            "patch_size": 4,
            "window_size": 4,
            "embed_dim": 16,
            "depths": (1, 1),
            "num_heads": (1, 2),
        },
        "patch_embed",
        "head.fc",
    ),
    "convnext": (
        "convnext_atto",
        {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)},
        "stem",
        "head.fc",
    ),
    "resnet": (
        "resnet18",
        {"layers": (1, 1, 1, 1), "channels": (8, 16, 32, 64), "stem_width": 8},
        "conv1",
        "fc",
    ),
    "resnet-deep-stem": ("test_resnet", {}, "conv1.0", "fc"),
    "efficientnet": ("test_efficientnet", {}, "conv_stem", "classifier"),
}
BATCHNORM_FAMILIES = ["resnet", "resnet-deep-stem", "efficientnet"]


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    name, kwargs, _, _ = FAMILIES[family]
    return timm.create_model(
        name, pretrained=False, num_classes=5, drop_rate=0.0, drop_path_rate=0.0, **kwargs
    )


def images(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_and_the_term_at_eps_1_and_0(family: str) -> None:
    model = build(family)
    _, _, embedding, head = FAMILIES[family]
    text = str(rxf.explain(model, spectral_norm_head=True))
    assert f"embedding (noise)  {embedding} (" in text and "by timm)" in text
    assert f"head (R4F)         {head} (by timm" in text
    reference = copy.deepcopy(model)
    x = images()
    wrapped = rxf.wrap(model, eps=1.0)
    assert wrapped.rxf_targets.embedding is model.get_submodule(embedding)
    torch.manual_seed(1)
    output = wrapped(x)
    assert wrapped.last_stats["divergence"] > 1e-4
    torch.testing.assert_close(output, reference(x), rtol=0, atol=0)  # the clean pass
    silent = rxf.wrap(rxf.unwrap(wrapped), eps=0.0)
    silent(x)
    assert silent.last_stats["divergence"] <= 1e-7


@pytest.mark.parametrize("family", BATCHNORM_FAMILIES)
def test_noisy_pass_leaves_batchnorm_statistics_alone(family: str) -> None:
    model = build(family)
    clean_only = copy.deepcopy(model)
    x = images(6)
    before = batchnorm_state(model)
    wrapped = rxf.wrap(model, eps=1.0)
    output = wrapped(x)
    (output.sum() + wrapped.consistency_loss).backward()
    clean_only(x)
    after, expected = batchnorm_state(model), batchnorm_state(clean_only)
    assert after.keys() == expected.keys() and len(after) > 3
    for key in after:
        assert torch.equal(after[key], expected[key]), key
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert moved  # the clean pass did update them
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, _BatchNorm))
    # a second (noisy) pass without the freeze would have moved them again
    with torch.no_grad():
        clean_only(x + 1.0)
    assert any(not torch.equal(batchnorm_state(clean_only)[k], expected[k]) for k in moved)


@pytest.mark.parametrize("family", ["vit", "swin", "convnext", "resnet", "efficientnet"])
def test_r4f_on_the_classifier_after_steps_and_unwrap(family: str) -> None:
    model = build(family)
    keys = set(model.state_dict())
    wrapped = rxf.wrap(model, eps=0.1, spectral_norm_head=True)
    head = model.get_classifier()
    linear = head if isinstance(head, nn.Linear) else head.fc
    assert wrapped.rxf_targets.spectral_linears == [linear]
    # a fine-tuning learning rate: the one power step per forward keeps up with the weight
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-4)
    x, y = images(), torch.tensor([0, 1, 2, 3])
    for _ in range(4):
        loss = nn.functional.cross_entropy(wrapped(x), y) + wrapped.consistency_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    wrapped(x)  # one more power iteration for the weight in use now
    sigma = torch.linalg.matrix_norm(linear.weight.detach(), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=1e-3)
    plain = rxf.unwrap(wrapped)
    assert not parametrize.is_parametrized(linear) and type(linear) is nn.Linear
    assert set(plain.state_dict()) == keys
    baked = torch.linalg.matrix_norm(linear.weight.detach(), ord=2)
    assert float(baked) == pytest.approx(1.0, abs=1e-3)


def test_head_errors_name_the_fix() -> None:
    distilled = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, **SMALL_VIT
    )
    with pytest.raises(RXFError, match=r"2 classification heads.*RXFConfig\(head='head_dist'\)"):
        rxf.wrap(distilled, spectral_norm_head=True)
    wrapped = rxf.wrap(distilled, spectral_norm_head=True, head="head")
    assert wrapped.rxf_targets.spectral_linears == [distilled.head]
    headless = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, **SMALL_VIT
    )
    with pytest.raises(RXFError, match=r"no Linear classifier.*reset_classifier"):
        rxf.wrap(headless, spectral_norm_head=True)


def test_other_models_are_left_to_other_plugins() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    assert not rxf_timm.is_timm_model(net)
    assert rxf_timm.rxf_find_embedding(net) is None and rxf_timm.rxf_find_head(net) is None


def test_importing_the_adapter_imports_no_framework() -> None:
    code = (
        "import sys, rxf_timm; bad = [m for m in ('timm', 'torchvision', 'transformers') "
        "if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
