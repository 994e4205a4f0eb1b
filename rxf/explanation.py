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
            ("method", method_name(cfg)),
            ("per step", per_step(cfg)),
            (
                "embedding (noise)",
                f"{self.embedding} ({self.embedding_module}, by {self.embedding_plugin})"
                if cfg.method != "rdrop"
                else "not used (R-Drop adds no noise)",
            ),
            (
                "embedding calls",
                "all calls perturbed"
                if self.embedding_calls == "all"
                else "first call only (an encoder-decoder sharing one embedding module)",
            ),
            ("noise", _noise(cfg)),
            ("divergence", _divergence(cfg)),
            (
                "head (R4F)",
                f"{self.head} (by {self.head_plugin}, scope {cfg.spectral_norm_scope})"
                if self.head
                else "off",
            ),
            ("logits", self.logits),
        ]
        if cfg.method == "rdrop":
            rows = [row for row in rows if row[0] != "embedding calls"]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def method_name(cfg: RXFConfig) -> str:
    """The family member a config runs, in words (its paper)."""
    if cfg.method == "rdrop":
        return "R-Drop (Liang et al., 2021)"
    if cfg.method == "smart":
        return "SMART adversarial regularizer (Jiang et al., 2020)"
    if cfg.r3f_lambda == 0:
        known = "NEFTune (Jain et al., 2023)" if cfg.noise_type == "neftune" else "noise only"
        return f"{known}: noisy embeddings, no term"
    name = "R4F" if cfg.spectral_norm_head else "R3F"
    return f"{name} (Aghajanyan et al., 2020)"


def per_step(cfg: RXFConfig) -> str:
    """What one training forward runs, in forward/backward passes.

    Example:
        >>> per_step(RXFConfig.preset("smart", smart_steps=2)).split(",")[1]
        ' 2 ascent forwards + 2 backwards to the perturbation only (no parameter gradients)'
    """
    if cfg.method == "smart":
        k = cfg.smart_steps
        s = "s" if k > 1 else ""
        return (
            f"1 clean forward, {k} ascent forward{s} + {k} backward{s} to the perturbation only "
            f"(no parameter gradients), 1 final forward at the perturbation; your backward "
            f"goes through the clean and final passes"
        )
    if cfg.method == "rdrop":
        return (
            "2 forwards with independent dropout masks, no noise; loss = mean of both passes' "
            "task losses + term; your backward goes through both"
        )
    if cfg.r3f_lambda == 0:
        return "1 noisy forward; your backward goes through it (no second pass, no term)"
    if cfg.mode == "concat":
        return "1 forward over the doubled batch (clean + noisy halves); your backward through it"
    return "1 clean forward + 1 noisy forward; your backward goes through both"


def _noise(cfg: RXFConfig) -> str:
    if cfg.method == "rdrop":
        return "none (the two passes differ by their dropout masks)"
    if cfg.method == "smart":
        return (
            f"start {cfg.noise_type} at {cfg.smart_init_std:g}; {cfg.smart_steps} step(s) of "
            f"{cfg.smart_step_size:g} along the {cfg.smart_norm}-normalized gradient (per "
            f"{cfg.smart_norm_level}), projected onto the {cfg.smart_norm} ball eps="
            f"{cfg.eps:g}; detach={cfg.detach_noisy_embedding}"
        )
    if cfg.r3f_lambda == 0:  # the only pass trains through its noisy embeddings
        return f"{cfg.noise_type}, eps={cfg.eps:g}"
    return f"{cfg.noise_type}, eps={cfg.eps:g}, detach={cfg.detach_noisy_embedding}"


def _divergence(cfg: RXFConfig) -> str:
    if cfg.method == "r3f" and cfg.r3f_lambda == 0:
        return "none (no second pass)"
    weight = {
        "rdrop": f"term = alpha/4 · D, alpha={cfg.r3f_lambda:g}",
        "smart": f"term = lambda_s · D, lambda_s={cfg.r3f_lambda:g}",
    }.get(cfg.method, f"term = lambda · D, lambda={cfg.r3f_lambda:g}")
    return (
        f"D = {cfg.divergence} (regression: {cfg.regression_divergence}), {weight}, "
        f"token_reduction={cfg.token_reduction}"
    )


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
    if cfg.embedding is not None:
        embedding_plugin = "config"
    elif targets.embedding is inner:  # R-Drop needs none and none was found
        embedding_plugin = "none"
    else:
        embedding_plugin = plugins.answered_by("rxf_find_embedding", targets.embedding, model=inner)
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
