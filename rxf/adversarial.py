"""SMART's adversarial perturbation: projected gradient ascent on the embedding output.

Jiang et al. (2020), "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural
Language Models through Principled Regularized Optimization", Algorithm 1 (the
smoothness-inducing adversarial regularizer)::

    δ₀ ~ N(0, σ²I)                                   (noise_type at scale smart_init_std)
    for k = 1..K:
        g  = ∇_δ l_s(f(x; θ), f(x + δ; θ))           (θ and f(x) held fixed)
        δ  = Π_{‖δ‖ ≤ ε}(δ + η · g / ‖g‖)            (normalize, step, project)
    R  = l_s(f(x; θ), f(x + δ_K; θ))                 (the term, trained through θ)

``‖·‖`` is ``smart_norm`` (the paper's ℓ∞, or ℓ2), taken per embedding vector (``"token"``:
the last dimension) or per example (``"example"``: every dimension but the batch); ``Π`` is
the Euclidean projection onto that ball: clamping to ``[-ε, ε]`` for ℓ∞ (the same at either
level), rescaling to norm ε for ℓ2. The public implementations (mt-dnn's
``SmartPerturbation``, ``smart-pytorch``) instead divide ``δ + η·g`` by its norm, so their
perturbation has norm 1 whatever ε is; rxf projects (docs/methods/smart.md).

This module holds the perturbation's state and arithmetic; :class:`rxf.RXFModel` runs the
passes (no parameter gradient inside the ascent: ``torch.autograd.grad`` w.r.t. δ only, so
no DDP reduction either).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from rxf.errors import RXFError
from rxf.noise import NoiseSampler

Norm = Literal["linf", "l2"]
Level = Literal["token", "example"]


def _norm(values: Tensor, norm: Norm, level: Level) -> Tensor:
    """``values``' norm per token or per example, broadcastable against ``values``."""
    if values.dim() <= 1:  # one value per example
        return values.abs()
    dims = (-1,) if level == "token" else tuple(range(1, values.dim()))
    if norm == "linf":
        return values.abs().amax(dim=dims, keepdim=True)
    return torch.linalg.vector_norm(values, dim=dims, keepdim=True)


def normalize(grad: Tensor, norm: Norm = "linf", level: Level = "token") -> Tensor:
    """``grad / ‖grad‖`` per token or per example; 0 where the gradient is 0 (padding).

    SMART's Algorithm 1, line "g̃ ← g / ‖g‖∞" (ℓ2 also offered).

    Shape:
        ``grad``: ``(batch, ...)``, any floating dtype; the result has its shape and dtype.

    Example:
        >>> normalize(torch.tensor([[[2.0, -4.0], [0.0, 0.0]]])).tolist()
        [[[0.5, -1.0], [0.0, 0.0]]]
    """
    scale = _norm(grad, norm, level)
    return grad / torch.where(scale > 0, scale, torch.ones_like(scale))


def project(delta: Tensor, eps: float, norm: Norm = "linf", level: Level = "token") -> Tensor:
    """The Euclidean projection of ``delta`` onto the ball ``‖δ‖ ≤ eps`` (per token or
    per example).

    ℓ∞: every entry clamped to ``[-eps, eps]`` (the ℓ∞ ball of an example is the product of
    its tokens' balls, so the level does not matter); ℓ2: ``δ · min(1, eps / ‖δ‖₂)``.

    Shape:
        ``delta``: ``(batch, ...)``; the result has its shape and dtype.

    Example:
        >>> project(torch.tensor([[3.0, 4.0]]), 1.0, "l2").tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    if norm == "linf":
        return delta.clamp(-eps, eps)
    size = _norm(delta, "l2", level)
    return torch.where(size > eps, delta * (eps / torch.where(size > 0, size, 1.0)), delta)


class AdversarialPerturbation:
    """The perturbations δ of one training forward, one per perturbed embedding call.

    :meth:`sampler` is the noise sampler rxf's hook calls in each pass: the first pass draws
    δ₀ from ``init`` at scale ``init_std`` (SMART: N(0, σ²)), later passes return the current
    δ. :meth:`step` takes one ascent step. δ is held in float32 (float64 for a float64
    model), as a leaf that requires grad during the ascent. ``batch`` (the clean logits'
    first dimension) lets ``level="example"`` refuse embeddings that are not batch first.

    Example:
        >>> from rxf.noise import normal_noise
        >>> p = AdversarialPerturbation(normal_noise, 1e-5, eps=1e-5, step_size=1e-3)
        >>> emb = torch.zeros(1, 2, 4)
        >>> d = p.sampler()(emb, 0.0)
        >>> p.step([torch.ones_like(d)])
        >>> bool((p.deltas[0] == 1e-5).all())
        True
    """

    def __init__(
        self,
        init: NoiseSampler,
        init_std: float,
        *,
        eps: float,
        step_size: float,
        norm: Norm = "linf",
        level: Level = "token",
        batch: int | None = None,
    ) -> None:
        self.init, self.init_std, self.batch = init, init_std, batch
        self.eps, self.step_size, self.norm, self.level = eps, step_size, norm, level
        self.deltas: list[Tensor] = []
        self._drawn = False

    def sampler(self) -> NoiseSampler:
        """A sampler for one pass: call ``i`` of the embedding gets ``deltas[i]``."""
        calls = itertools.count()

        def sample(embeddings: Tensor, eps: float, **extras: Any) -> Tensor:
            index = next(calls)
            if not self._drawn:
                self._check_batch_first(embeddings)
                noise = self.init(embeddings, self.init_std, **extras)
                dtype = torch.promote_types(embeddings.dtype, torch.float32)
                delta = noise.detach().to(dtype).requires_grad_(torch.is_grad_enabled())
                self.deltas.append(delta)
                return delta
            if index >= len(self.deltas) or self.deltas[index].shape != embeddings.shape:
                raise RXFError(
                    f"method='smart': the embedding was called differently in the ascent "
                    f"passes (call {index + 1}, shape {tuple(embeddings.shape)}; first pass: "
                    f"{[tuple(d.shape) for d in self.deltas]}). The ascent needs the same "
                    f"embedding calls in every pass."
                )
            return self.deltas[index]

        return sample

    def _check_batch_first(self, embeddings: Tensor) -> None:
        """Per-example norms need the batch first: refuse an embedding output whose first
        dimension is not the batch (a sequence-first model) at ``level="example"``."""
        if self.level != "example" or self.batch is None:
            return
        if embeddings.dim() == 0 or embeddings.shape[0] != self.batch:
            raise RXFError(
                f"method='smart' with smart_norm_level='example' normalizes and projects per "
                f"example, over every dimension but the first, but the embedding output has "
                f"shape {tuple(embeddings.shape)} for a batch of {self.batch} (sequence "
                f"first?). Use smart_norm_level='token' (per embedding vector: any layout), "
                f"or embed batch first."
            )

    def end_pass(self) -> None:
        """Mark the first pass's draws done (later passes reuse the δs)."""
        self._drawn = True

    def step(self, grads: list[Tensor | None] | tuple[Tensor | None, ...]) -> None:
        """``δ ← Π_ε(δ + η · g / ‖g‖)`` for each δ (a ``None`` gradient counts as 0)."""
        stepped = []
        for delta, grad in zip(self.deltas, grads, strict=True):
            with torch.no_grad():
                moved = delta.detach()
                if grad is not None:
                    moved = moved + self.step_size * normalize(grad, self.norm, self.level)
                new = project(moved, self.eps, self.norm, self.level)
            stepped.append(new.requires_grad_(True))
        self.deltas = stepped

    def fixed(self) -> NoiseSampler:
        """A sampler for the final pass: the current δs, detached (constants)."""
        self.deltas = [d.detach() for d in self.deltas]
        return self.sampler()

    def size(self) -> Tensor:
        """The largest norm of a δ over tokens/examples, relative to eps (detached)."""
        with torch.no_grad():
            sizes = [_norm(d.detach(), self.norm, self.level).amax() for d in self.deltas]
            return torch.stack(sizes).amax().float() / self.eps


def ascend(
    perturbation: AdversarialPerturbation,
    steps: int,
    divergence_at: Callable[[NoiseSampler], Tensor],
) -> None:
    """``steps`` projected ascent steps on ``perturbation`` (SMART's Algorithm 1, inner loop).

    Each step runs ``divergence_at(perturbation.sampler())`` (one forward of the model with
    the current δs added, returning the 0-dim divergence from the fixed clean output), takes
    its gradient w.r.t. the δs only (``torch.autograd.grad``: no parameter gradient, so no
    DDP reduction) and calls :meth:`AdversarialPerturbation.step`. Runs with grad enabled.

    Raises:
        RXFError: the model uses reentrant activation checkpointing, which
            ``torch.autograd.grad`` does not support (names the non-reentrant setting).

    Example:
        >>> from rxf.noise import normal_noise
        >>> p = AdversarialPerturbation(normal_noise, 0.1, eps=0.5, step_size=1.0)
        >>> x = torch.ones(1, 2, 3)
        >>> ascend(p, 2, lambda sample: (x + sample(x, 0.0)).pow(2).sum())
        >>> p.deltas[0].abs().max().item()
        0.5
    """
    with torch.enable_grad():
        for _ in range(steps):
            value = divergence_at(perturbation.sampler())
            perturbation.end_pass()
            try:
                grads = torch.autograd.grad(value, perturbation.deltas, allow_unused=True)
            except RuntimeError as exc:
                if "heckpoint" not in str(exc):
                    raise
                raise RXFError(
                    "method='smart' takes the gradient w.r.t. the perturbation alone "
                    "(torch.autograd.grad), which reentrant activation checkpointing does not "
                    "support. Use non-reentrant checkpointing: "
                    "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs="
                    "{'use_reentrant': False}) or torch.utils.checkpoint(..., "
                    "use_reentrant=False)."
                ) from exc
            perturbation.step(grads)
