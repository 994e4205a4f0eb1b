"""RXFLoss: R3F's consistency term added to a sentence-transformers loss."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rxf
from rxf import RXFConfig, RXFError, plugins

Target = Literal["similarity", "embedding"]


class RXFLoss(nn.Module):
    """A sentence-transformers loss plus ``r3f_lambda · D(clean, noisy)``.

    In training mode each call runs the wrapped loss (the clean pass; every model call it
    makes is recorded: its inputs and its sentence embeddings), then each recorded call again
    with noise on the token embeddings (``eps`` and ``noise_type`` of :class:`rxf.RXFConfig`),
    and adds ``r3f_lambda`` times the divergence between the clean and the noisy batch:

    * ``target="similarity"`` (default): for each sentence i of the batch (all columns), the
      distribution ``softmax_j(scale · cos(e_i, e_j))`` over the other sentences j ≠ i; the
      configured ``divergence`` (default KL(P‖Q) + KL(Q‖P)) between the clean and the noisy
      distributions, averaged over sentences. This is R3F's symmetric KL (Aghajanyan et al.,
      "Better Fine-Tuning by Reducing Representational Collapse", ICLR 2021, eq. 1) taken on
      what in-batch contrastive losses compare: ``MultipleNegativesRankingLoss`` (InfoNCE)
      classifies each anchor among the batch's candidates with exactly these logits
      (``scale`` = 20 is its default).
    * ``target="embedding"``: the ``regression_divergence`` (default squared difference,
      summed over dimensions) between each sentence's clean and noisy embedding, averaged over
      sentences: rxf's real-valued R3F, for losses on the embeddings or their cosine
      (``CosineSimilarityLoss``, ``CoSENTLoss``).

    The noisy pass keeps its gradient into the embedding table (``detach_noisy_embedding``
    does not apply). With ``r3f_lambda=0`` the wrapped loss runs once, on the noisy pass
    (noise only, NEFTune's use with ``noise_type="neftune"``). With ``method="rdrop"``
    (``RXFConfig.preset("rdrop")``) the wrapped loss runs twice without noise (two dropout
    samples), its two values are averaged and ``(r3f_lambda / 4) · D`` between the two
    passes is added: R-Drop as :func:`rxf.wrap` runs it. ``method="smart"`` is refused with
    an :class:`rxf.RXFError` (SMART's ascent runs inside a wrapped forward and cannot climb
    this loss's batch-wide divergence). In eval mode it is the wrapped loss. ``last_stats``
    holds the numbers of the last training call.

    Example:
        >>> loss = RXFLoss(MultipleNegativesRankingLoss(model), eps=1e-5)  # doctest: +SKIP
        >>> SentenceTransformerTrainer(model=model, train_dataset=data,  # doctest: +SKIP
        ...                            loss=loss).train()
    """

    def __init__(
        self,
        loss: nn.Module,
        config: RXFConfig | Mapping[str, Any] | None = None,
        *,
        target: Target = "similarity",
        scale: float = 20.0,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if target not in ("similarity", "embedding"):
            raise RXFError(f"RXFLoss: target must be 'similarity' or 'embedding', got {target!r}")
        base = config if isinstance(config, RXFConfig) else RXFConfig.from_dict(config or {})
        cfg = base.with_overrides(**overrides)
        if cfg.spectral_norm_head:
            raise RXFError(
                "RXFLoss: R4F (spectral_norm_head=True) normalizes a classification head, and a "
                "SentenceTransformer has none; use R3F (spectral_norm_head=False)."
            )
        if cfg.method == "smart":
            raise RXFError(
                "RXFLoss: method='smart' is not supported: SMART's ascent takes the gradient "
                "of the divergence w.r.t. the perturbation inside one wrapped forward, while "
                "RXFLoss's divergence compares the in-batch similarities of all the loss's "
                "model calls together, so rxf's ascent cannot climb it. Use "
                "RXFConfig.preset('r3f') or RXFConfig.preset('rdrop') with RXFLoss."
            )
        self.loss = loss
        self.target: Target = target
        self.scale = scale
        self.rxf_config = cfg
        model = _sentence_model(loss)
        # the noisy passes: a noise-only view of the same model (no copy, no new parameters);
        # R-Drop's second pass is the plain model again
        noisy = cfg.method == "r3f"
        self.__dict__["_noisy"] = (
            rxf.wrap(model, cfg.with_overrides(r3f_lambda=0.0)) if noisy else None
        )
        self._divergences = plugins.divergences()
        self.last_stats: dict[str, Any] = {"mode": "none"}

    @property
    def model(self) -> nn.Module:
        """The SentenceTransformer the wrapped loss calls (under any DDP wrapper)."""
        return _sentence_model(self.loss)

    def forward(self, sentence_features: Iterable[dict[str, Any]], labels: Any) -> Tensor:
        """The wrapped loss on the clean pass plus ``r3f_lambda`` · the divergence."""
        features = list(sentence_features)
        model = _sentence_model(self.loss)
        noisy: Any = self._noisy
        if not model.training:
            self.last_stats = {"mode": "eval"}
            result: Tensor = self.loss(features, labels)
            return result
        if self.rxf_config.method == "rdrop":
            return self._rdrop(model, features, labels)
        noisy.train(True)
        if self.rxf_config.r3f_lambda == 0:
            with _calls_through(self.loss, noisy):
                value: Tensor = self.loss(features, labels)
            self.last_stats = {"mode": "noise_only", **_noise_level(noisy)}
            return value
        value, calls = self._recorded_loss(model, features, labels)
        clean = torch.cat([embedding for _, _, embedding in calls])
        noisy_embeddings = [
            noisy(dict(inputs), **kwargs)["sentence_embedding"] for inputs, kwargs, _ in calls
        ]
        divergence = self._divergence(clean, torch.cat(noisy_embeddings))
        term = self.rxf_config.r3f_lambda * divergence
        self.last_stats = {
            "mode": "two_pass",
            "method": "r3f",
            "target": self.target,
            "divergence": divergence.item(),
            "consistency_loss": term.item(),
            "sentences": clean.shape[0],
            **_noise_level(noisy),
        }
        return value + term.to(value.dtype)

    def _recorded_loss(
        self, model: nn.Module, features: list[dict[str, Any]], labels: Any
    ) -> tuple[Tensor, list[tuple[dict[str, Any], dict[str, Any], Tensor]]]:
        """The wrapped loss, with every call it made of ``model`` (checked usable)."""
        with _recorded(model) as calls:
            value: Tensor = self.loss(features, labels)
        if not calls:
            raise RXFError(
                "RXFLoss: the wrapped loss made no call of its SentenceTransformer, so there is "
                "no batch to perturb; wrap a loss that embeds its inputs with its model."
            )
        if torch.is_grad_enabled() and not all(e.requires_grad for _, _, e in calls):
            raise RXFError(
                f"RXFLoss: {type(self.loss).__name__} embeds (some of) its inputs without "
                "gradients (a cached loss such as CachedMultipleNegativesRankingLoss computes "
                "the embeddings under no_grad and the gradients later), so the term could not "
                "train the model through them; wrap the loss's non-cached version instead "
                "(e.g. MultipleNegativesRankingLoss)."
            )
        return value, calls

    def _rdrop(self, model: nn.Module, features: list[dict[str, Any]], labels: Any) -> Tensor:
        """R-Drop (``method="rdrop"``): the wrapped loss twice (independent dropout masks, no
        noise), averaged, plus ``(r3f_lambda / 4) · D`` between the two passes' targets,
        as :func:`rxf.wrap` defines R-Drop's term."""
        again = [dict(f) for f in features]  # the model adds its outputs to the mappings
        first, calls = self._recorded_loss(model, features, labels)
        second, second_calls = self._recorded_loss(model, again, labels)
        divergence = self._divergence(
            torch.cat([e for _, _, e in calls]), torch.cat([e for _, _, e in second_calls])
        )
        term = self.rxf_config.r3f_lambda * divergence / 4
        self.last_stats = {
            "mode": "two_pass",
            "method": "rdrop",
            "target": self.target,
            "divergence": divergence.item(),
            "consistency_loss": term.item(),
            "sentences": sum(len(e) for _, _, e in calls),
        }
        return (first + second) / 2 + term.to(first.dtype)

    def _divergence(self, clean: Tensor, noisy: Tensor) -> Tensor:
        cfg = self.rxf_config
        if self.target == "embedding":
            return self._divergences[cfg.regression_divergence](clean, noisy).mean()
        return self._divergences[cfg.divergence](
            self._similarities(clean), self._similarities(noisy)
        ).mean()

    def _similarities(self, embeddings: Tensor) -> Tensor:
        unit = F.normalize(embeddings.float(), dim=-1)
        logits = self.scale * unit @ unit.T
        itself = torch.eye(len(unit), dtype=torch.bool, device=unit.device)
        return logits.masked_fill(itself, -math.inf)

    def get_config_dict(self) -> dict[str, Any]:
        """For sentence-transformers' model card."""
        inner = getattr(self.loss, "get_config_dict", None)
        return {
            "loss": type(self.loss).__name__,
            **(inner() if callable(inner) else {}),
            "target": self.target,
            "scale": self.scale,
            **self.rxf_config.model_dump(),
        }


def _sentence_model(loss: nn.Module) -> nn.Module:
    """The SentenceTransformer a loss calls, under DDP / compile wrappers."""
    model = getattr(loss, "model", None)
    for _ in range(8):
        if model is None or not isinstance(getattr(model, "module", None), nn.Module):
            break
        model = model.module
    if not isinstance(model, nn.Module):
        raise RXFError(
            f"RXFLoss wraps a sentence-transformers loss that keeps its model as .model; "
            f"{type(loss).__name__} has none."
        )
    return model


@contextmanager
def _recorded(model: nn.Module) -> Iterator[list[tuple[dict[str, Any], dict[str, Any], Tensor]]]:
    """Records each call of ``model``: its input mapping (copied before the forward adds its
    outputs to it), its keyword arguments and the sentence embeddings it returned."""
    calls: list[tuple[dict[str, Any], dict[str, Any], Tensor]] = []
    pending: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs: Any = args[0] if args else kwargs.get("input", kwargs.get("features"))
        rest = {k: v for k, v in kwargs.items() if k not in ("input", "features")}
        pending.append((dict(inputs), rest))

    def after(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        inputs, rest = pending.pop()
        calls.append((inputs, rest, output["sentence_embedding"]))

    handles = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _calls_through(loss: nn.Module, wrapper: nn.Module) -> Iterator[None]:
    """The loss calls ``wrapper`` (the noise-only view) instead of its model, for one call."""
    original = loss.model
    loss.model = wrapper
    try:
        yield
    finally:
        loss.model = original


def _noise_level(noisy: Any) -> dict[str, Any]:
    stats = noisy.last_stats
    return {"noise_to_signal": stats["noise_to_signal"]} if "noise_to_signal" in stats else {}
