"""RXFConfig: every knob of the regularizer family, validated; loaded from dicts, JSON or YAML.

One wrapper runs the family: R3F/R4F (Aghajanyan et al., 2020), NEFTune (Jain et al., 2023,
noise only), R-Drop (Liang et al., 2021) and SMART's adversarial regularizer (Jiang et al.,
2020), chosen by ``method`` and the fields it reads; :meth:`RXFConfig.preset` gives each with
its paper's defaults.

Pure data: building a config imports no plugin, no framework and not torch. Registered names
(``noise_type``, ``divergence``, ``regression_divergence``) are checked where they are used,
at :func:`rxf.wrap`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Method = Literal["r3f", "rdrop", "smart"]
PresetName = Literal["r3f", "r4f", "rdrop", "neftune", "smart"]

#: Each preset's fields: its paper's defaults (docs/methods/ has one page per family).
PRESETS: dict[str, dict[str, Any]] = {
    # Aghajanyan et al. (2020), section 3 and the released fairseq criteria
    "r3f": {"method": "r3f", "eps": 1e-5, "r3f_lambda": 1.0, "noise_type": "uniform"},
    "r4f": {
        "method": "r3f",
        "eps": 1e-5,
        "r3f_lambda": 1.0,
        "noise_type": "uniform",
        "spectral_norm_head": True,
    },
    # Liang et al. (2021), section 2.1; alpha = 1.0 (their GLUE range is 0.1-1.0, translation 5)
    "rdrop": {"method": "rdrop", "eps": 0.0, "r3f_lambda": 1.0},
    # Jain et al. (2023), Algorithm 1, alpha = 5: noise only, one pass
    "neftune": {"method": "r3f", "noise_type": "neftune", "eps": 5.0, "r3f_lambda": 0.0},
    # Jiang et al. (2020), Algorithm 1 and section 5: eps = sigma = 1e-5, eta = 1e-3, T = 1,
    # lambda_s = 1 (their range 1-5), l_inf per example, embeddings trained through the final pass
    "smart": {
        "method": "smart",
        "eps": 1e-5,
        "r3f_lambda": 1.0,
        "noise_type": "normal",
        "smart_init_std": 1e-5,
        "smart_step_size": 1e-3,
        "smart_steps": 1,
        "smart_norm": "linf",
        "smart_norm_level": "example",
        "detach_noisy_embedding": False,
    },
}


#: Fields whose default depends on ``method``, applied when the field is not given.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "rdrop": {"eps": 0.0},
    "smart": {"noise_type": "normal", "detach_noisy_embedding": False},
}


class RXFConfig(BaseModel):
    """Settings of the regularizer. Frozen; unknown keys are rejected.

    The default is R3F with the reference's settings; ``RXFConfig.preset(name)`` gives any
    method of the family with its paper's defaults.

    Example:
        >>> cfg = RXFConfig(eps=1e-5, r3f_lambda=0.7)
        >>> cfg.noise_type, cfg.divergence
        ('uniform', 'symmetric_kl')
        >>> RXFConfig.preset("smart", smart_steps=2).smart_steps
        2
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    method: Method = Field(
        "r3f",
        description="'r3f': a clean and a noisy pass, term lambda·D (R3F; R4F with "
        "spectral_norm_head; NEFTune with r3f_lambda=0). 'rdrop': two dropout passes without "
        "noise, the task loss of both averaged, term (lambda/2)·(D/2) (R-Drop's objective halved). "
        "'smart': the noisy pass's perturbation first climbs the divergence in smart_steps "
        "projected ascent steps (SMART's adversarial regularizer).",
    )

    eps: float = Field(
        1e-5,
        ge=0,
        allow_inf_nan=False,
        description="Noise scale: half-width for 'uniform', standard deviation for 'normal', "
        "NEFTune's α; with method='smart' the radius ε of the ball the perturbation is "
        "projected onto. 0 turns the noise off (method='rdrop' requires 0).",
    )
    r3f_lambda: float = Field(
        1.0,
        ge=0,
        allow_inf_nan=False,
        description="Weight of the term: R3F's λ, R-Drop's α, SMART's λ_s. 0 means noise "
        "only: one noisy pass, no second forward (the NEFTune use; method 'r3f' only).",
    )
    noise_type: str = Field(
        "uniform",
        description="A registered noise type: 'uniform', 'normal', or a plugin's (the "
        "first-party NEFTune plugin registers NEFTune's). method='smart': the distribution "
        "of the ascent's starting point, at scale smart_init_std (SMART: 'normal').",
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

    smart_steps: int = Field(
        1,
        ge=1,
        le=100,
        description="method='smart': ascent steps K on the perturbation (SMART's T_x̃) "
        "before the term is taken at it.",
    )
    smart_step_size: float = Field(
        1e-3,
        gt=0,
        allow_inf_nan=False,
        description="method='smart': ascent step size η; each step moves the perturbation "
        "by η·g/‖g‖ (g its gradient, normalized in smart_norm per smart_norm_level) before "
        "the projection onto the eps-ball.",
    )
    smart_init_std: float = Field(
        1e-5,
        ge=0,
        allow_inf_nan=False,
        description="method='smart': scale σ of the starting perturbation (noise_type at "
        "scale σ; SMART: N(0, σ²)).",
    )
    smart_norm: Literal["linf", "l2"] = Field(
        "linf",
        description="method='smart': the norm of the step's normalization and of the "
        "eps-ball (SMART: 'linf').",
    )
    smart_norm_level: Literal["token", "example"] = Field(
        "example",
        description="method='smart': normalize the gradient (and project, for 'l2') per "
        "example as a whole (SMART's Algorithm 1: ‖g_i‖ of example i) or per embedding "
        "vector, the last dimension: a token, a patch ('token': mt-dnn's default).",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fields left unset take their method's default (:data:`METHOD_DEFAULTS`)."""
        if isinstance(data, Mapping):
            method = data.get("method", "r3f")
            if method not in get_args(Method):
                raise ValueError(
                    f"method={method!r} is not a method; the methods are "
                    f"{', '.join(map(repr, get_args(Method)))}. NEFTune and R4F are presets of "
                    f"method 'r3f': RXFConfig.preset({method!r}) (presets: "
                    f"{', '.join(map(repr, get_args(PresetName)))})"
                )
            data = {**METHOD_DEFAULTS.get(str(method), {}), **data}
        return data

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
        if self.method != "r3f" and self.r3f_lambda == 0:
            raise ValueError(
                f"method={self.method!r} with r3f_lambda=0 has no term at all; set "
                f"r3f_lambda > 0, or use method='r3f' for noise only (r3f_lambda=0)"
            )
        if self.method == "rdrop":
            if self.eps != 0:
                raise ValueError(
                    f"method='rdrop' adds no noise, but eps={self.eps:g}: set eps=0, or use "
                    f"method='r3f' for a noisy second pass"
                )
            if self.share_dropout_masks:
                raise ValueError(
                    "method='rdrop' with share_dropout_masks=True runs two identical passes: "
                    "the term would be 0. R-Drop needs independent dropout masks."
                )
        if self.method == "smart" and (self.mode == "concat" or self.share_dropout_masks):
            raise ValueError(
                "method='smart' runs its ascent passes one after another, each with fresh "
                "dropout: mode='concat' and share_dropout_masks=True are not supported with it"
            )
        if self.method == "rdrop" and self.mode == "concat":
            raise ValueError(
                "method='rdrop' runs two passes (mode='two_pass'); mode='concat' is not "
                "supported with it"
            )
        # a field of another method, changed from its default, would be silently ignored
        changed = {
            f
            for f in self.model_fields_set
            if getattr(self, f) != type(self).model_fields[f].default
        }
        smart_fields = sorted(f for f in changed if f.startswith("smart_"))
        if self.method != "smart" and smart_fields:
            raise ValueError(
                f"{', '.join(smart_fields)} only apply to method='smart', but method="
                f"{self.method!r}: they would be ignored. Use RXFConfig.preset('smart', ...) "
                f"(or method='smart'), or drop them"
            )
        unused = sorted({"noise_type", "detach_noisy_embedding"} & changed)
        if self.method == "rdrop" and unused:
            raise ValueError(
                f"{', '.join(unused)} do not apply to method='rdrop' (two dropout passes, no "
                f"noise): they would be ignored. Drop them, or use method='r3f' for noise"
            )
        if self.method == "smart" and self.eps == 0:
            raise ValueError(
                "method='smart' with eps=0 projects the perturbation onto a ball of "
                "radius 0: the term would be 0. Set eps (SMART: 1e-5)."
            )
        return self

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> RXFConfig:
        """The config of one method of the family with its paper's defaults.

        ``"r3f"`` / ``"r4f"`` (Aghajanyan et al., 2020), ``"rdrop"`` (Liang et al., 2021),
        ``"neftune"`` (Jain et al., 2023; needs the first-party ``rxf_neftune`` plugin,
        installed with rxf) and ``"smart"`` (Jiang et al., 2020); ``overrides`` replace
        fields and are validated the same way. The fields of each: :data:`PRESETS`; cost per
        step: docs/methods/.

        Raises:
            ValueError: an unknown preset name (names the known ones).

        Example:
            >>> RXFConfig.preset("rdrop").eps
            0.0
            >>> RXFConfig.preset("r4f", r3f_lambda=0.7).spectral_norm_head
            True
        """
        if name not in PRESETS:
            known = ", ".join(repr(n) for n in get_args(PresetName))
            raise ValueError(f"unknown rxf preset {name!r}; the presets are {known}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RXFConfig:
        """Validate a mapping (e.g. the ``rxf:`` section of a larger config). A ``preset``
        key starts from that preset (:meth:`preset`), the other keys override it.

        Example:
            >>> RXFConfig.from_dict({"preset": "smart", "smart_steps": 2}).method
            'smart'
        """
        fields = dict(data)
        if "preset" in fields:
            name = fields.pop("preset")
            return cls.preset(str(name), **fields)
        return cls.model_validate(fields)

    def with_overrides(self, **overrides: Any) -> RXFConfig:
        """A copy with ``overrides`` applied, validated like a new config.

        Example:
            >>> RXFConfig(eps=0.1).with_overrides(r3f_lambda=0.7).eps
            0.1
        """
        if not overrides:
            return self
        method = overrides.get("method", self.method)
        if method != self.method and "method" in self.model_fields_set:
            raise ValueError(
                f"overriding method={self.method!r} with method={method!r} would keep the "
                f"{self.method!r} settings of this config (e.g. eps={self.eps:g}), which mean "
                f"something else for {method!r}. Start from that method's preset: "
                f"RXFConfig.preset({method!r}, ...)"
            )
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
