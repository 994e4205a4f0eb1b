"""RXFConfig: every knob of R3F/R4F, validated; loaded from dicts, JSON or YAML.

Pure data: building a config imports no plugin, no framework and not torch. Registered names
(``noise_type``, ``divergence``, ``regression_divergence``) are checked where they are used,
at :func:`rxf.wrap`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RXFConfig(BaseModel):
    """Settings of the R3F/R4F regularizer. Frozen; unknown keys are rejected.

    Example:
        >>> cfg = RXFConfig(eps=1e-5, r3f_lambda=0.7)
        >>> cfg.noise_type, cfg.divergence
        ('uniform', 'symmetric_kl')
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    eps: float = Field(
        1e-5,
        ge=0,
        allow_inf_nan=False,
        description="Noise scale: half-width for 'uniform', standard deviation for 'normal', "
        "NEFTune's α. 0 turns the noise off.",
    )
    r3f_lambda: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="Weight λ of the consistency term. 0 means noise only: one noisy pass, "
        "no second forward (the NEFTune use).",
    )
    noise_type: str = Field(
        "uniform",
        description="A registered noise type: 'uniform', 'normal', or a plugin's (the "
        "first-party NEFTune plugin registers NEFTune's).",
    )
    divergence: str = Field(
        "symmetric_kl",
        description="Divergence for class logits: 'symmetric_kl', 'kl', 'js', or a plugin's.",
    )
    regression_divergence: str = Field(
        "mse", description="Divergence used instead when the logits have one output (regression)."
    )
    spectral_norm_head: bool = Field(
        False, description="R4F: spectral normalization on the classification head."
    )
    spectral_norm_scope: Literal["final", "all"] = Field(
        "final",
        description="R4F on the head's final Linear only (the reference) or on every Linear.",
    )
    detach_noisy_embedding: bool = Field(
        True,
        description="Noisy pass uses emb.detach() + z (reference classification criterion); "
        "False lets the noisy pass's gradient reach the embedding (reference seq2seq criterion). "
        "Ignored when r3f_lambda=0: the single noisy pass then always trains the embedding.",
    )
    embedding: str | None = Field(
        None,
        description="Dotted path of the module whose output gets the noise; "
        "found by plugins if unset.",
    )
    head: str | None = Field(
        None,
        description="Dotted path of the classification head for R4F; found by plugins if unset.",
    )
    token_reduction: Literal["mean", "reference"] = Field(
        "mean",
        description="Token-level outputs: 'mean' over real tokens, or 'reference' "
        "(sum over all positions / batch size, as fairseq).",
    )
    embedding_calls: Literal["all", "first"] | None = Field(
        None,
        description="Which calls of the embedding module in the noisy pass get noise: 'all' "
        "(a bi-encoder embedding two texts with one table) or 'first' (an encoder and a "
        "decoder sharing one embedding module: the encoder's call). Unset: the adapter "
        "decides, 'all' by default.",
    )
    share_dropout_masks: bool = Field(
        False,
        description="Run the noisy pass with the clean pass's dropout masks (same RNG state "
        "for both passes; the noise is drawn from the stream after the clean pass), so the "
        "term measures the noise alone. Two-pass mode only.",
    )
    mode: Literal["two_pass", "concat"] = Field(
        "two_pass",
        description="'two_pass': clean and noisy forwards one after the other; "
        "'concat': one forward over the doubled batch (exact without batch-coupled layers; "
        "refuses BatchNorm in training mode; the model's loss must ignore label -100).",
    )

    @field_validator("embedding", "head")
    @classmethod
    def _dotted_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(not p for p in value.split("."))):
            raise ValueError(f"{value!r} is not a dotted module path like 'encoder.embed_tokens'")
        return value

    @model_validator(mode="after")
    def _compatible(self) -> RXFConfig:
        if self.share_dropout_masks and self.mode == "concat":
            raise ValueError(
                "share_dropout_masks=True needs mode='two_pass': in one doubled batch the "
                "clean and noisy copies cannot draw the same dropout masks"
            )
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RXFConfig:
        """Validate a mapping (e.g. the ``rxf:`` section of a larger config)."""
        return cls.model_validate(dict(data))

    def with_overrides(self, **overrides: Any) -> RXFConfig:
        """A copy with ``overrides`` applied, validated like a new config.

        Example:
            >>> RXFConfig(eps=0.1).with_overrides(r3f_lambda=0.7).eps
            0.1
        """
        if not overrides:
            return self
        return self.from_dict({**self.model_dump(exclude_unset=True), **overrides})

    @classmethod
    def from_file(cls, path: str | Path) -> RXFConfig:
        """Load a ``.json``, ``.yaml`` or ``.yml`` file holding the config's fields."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"rxf config file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ValueError(f"rxf config {str(path)!r}: use a .json, .yaml or .yml file")
        if not isinstance(data, Mapping):
            raise ValueError(f"rxf config {str(path)!r} must hold a mapping of fields")
        return cls.from_dict(data)
