"""explain(): what rxf hooks in a model and with which settings, in words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from rxf.config import RXFConfig
from rxf.discovery import discover
from rxf.errors import RXFError


@dataclass(frozen=True)
class Explanation:
    """The choices rxf makes for one model; ``str()`` gives a readable table."""

    model: str
    embedding: str
    embedding_module: str
    embedding_plugin: str
    head: str | None
    head_plugin: str | None
    logits: str
    config: RXFConfig
    embedding_calls: str = "all"

    def __str__(self) -> str:
        cfg = self.config
        rows = [
            ("model", self.model),
            (
                "embedding (noise)",
                f"{self.embedding} ({self.embedding_module}, by {self.embedding_plugin})",
            ),
            (
                "embedding calls",
                "all calls perturbed"
                if self.embedding_calls == "all"
                else "first call only (an encoder-decoder sharing one embedding module)",
            ),
            ("noise", f"{cfg.noise_type}, eps={cfg.eps:g}, detach={cfg.detach_noisy_embedding}"),
            (
                "divergence",
                f"{cfg.divergence} (regression: {cfg.regression_divergence}), "
                f"lambda={cfg.r3f_lambda:g}, token_reduction={cfg.token_reduction}",
            ),
            (
                "head (R4F)",
                f"{self.head} (by {self.head_plugin}, scope {cfg.spectral_norm_scope})"
                if self.head
                else "off",
            ),
            ("logits", self.logits),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def explain(model: nn.Module, config: RXFConfig | None = None, **overrides: Any) -> Explanation:
    """Say which embedding, head and logits rxf uses for ``model`` (wrapped or not).

    For an unwrapped model nothing is changed: discovery runs without attaching anything.

    Example:
        >>> import rxf, torch
        >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 3))
        >>> rxf.explain(net).embedding
        '0'
    """
    from rxf import plugins
    from rxf.wrapper import RXFModel

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(model, RXFModel):
        if model.__dict__.get("_unwrapped"):
            raise RXFError("this wrapper was undone by rxf.unwrap; explain the returned model")
        inner, cfg, targets = model.module, model.rxf_config, model.rxf_targets
    else:
        cfg = (config or RXFConfig()).with_overrides(**overrides)
        inner, targets = model, discover(model, cfg)
    calls = cfg.embedding_calls or plugins.embedding_calls(inner)
    embedding_plugin = (
        "config"
        if cfg.embedding is not None
        else plugins.answered_by("rxf_find_embedding", targets.embedding, model=inner)
    )
    head_plugin = None
    if targets.head is not None:
        head_plugin = (
            "config"
            if cfg.head is not None
            else plugins.answered_by("rxf_find_head", targets.head, model=inner)
        )
    return Explanation(
        model=type(inner).__name__,
        embedding=targets.embedding_name,
        embedding_module=type(targets.embedding).__name__,
        embedding_plugin=embedding_plugin,
        head=targets.head_name,
        head_plugin=head_plugin,
        logits="from the forward output, asked in order of: "
        + ", ".join(plugins.implementers("rxf_extract_logits")),
        config=cfg,
        embedding_calls=calls,
    )
