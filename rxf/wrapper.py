"""wrap() / RXFModel / unwrap(): the clean pass, the noisy pass and the consistency term."""

from __future__ import annotations

import inspect
import math
import types
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rxf import concat, plugins
from rxf.batchnorm import frozen_batchnorm_stats
from rxf.config import RXFConfig
from rxf.discovery import Targets, discover
from rxf.divergence import reduce_positions
from rxf.errors import RXFError, RXFPrecisionWarning
from rxf.inputs import ForwardInputs
from rxf.perturbation import PerturbationRecord, perturb
from rxf.spectral import baked_state_dict, remove_spectral_norm

_INNER = "module"


class RXFModel(nn.Module):
    """A model under R3F/R4F. Build it with :func:`wrap`; undo it with :func:`unwrap`.

    In training mode a forward runs the clean pass, then a noisy pass (noise on the
    embedding output), and returns the clean pass's output; ``consistency_loss`` holds
    ``r3f_lambda · divergence`` and is already added to the output's ``loss`` when it has
    one. With ``mode="concat"`` the two passes are one forward over the doubled batch
    (:mod:`rxf.concat`). With ``r3f_lambda=0`` it is one noisy pass (noise only). In eval mode
    it is one plain forward. Unknown attributes are read from the inner model, whose forward
    signature the wrapper shows.
    """

    def __init__(self, module: nn.Module, config: RXFConfig, targets: Targets) -> None:
        super().__init__()
        self.module = module
        self.rxf_config = config
        self.rxf_targets = targets
        self._sampler = plugins.noise_types()[config.noise_type]
        self._divergences = plugins.divergences()
        self._warned_precision = False
        self._checked_dtype: torch.dtype | None = None
        self._batch_norms: list[tuple[str, nn.Module]] | None = None
        self.consistency_loss: Tensor = torch.zeros(())
        self._stats: dict[str, Any] = {"mode": "none"}
        self._register_state_dict_hook(_strip_inner_prefix)
        self._register_load_state_dict_pre_hook(_add_inner_prefix)
        self.forward = types.MethodType(_forward_with_signature_of(module), self)  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == _INNER:
                raise
            return getattr(super().__getattr__(_INNER), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        cfg = self.rxf_config
        if not self.training:
            return self._single_pass(args, kwargs, noisy=False, mode="eval")
        if cfg.r3f_lambda == 0:
            return self._single_pass(args, kwargs, noisy=True, mode="noise_only")
        inputs = ForwardInputs(args, kwargs)
        if cfg.mode == "concat":
            output, clean_logits, noisy_logits, record = self._concat_pass(inputs)
        else:
            output = self.module(*args, **kwargs)
            detach = cfg.detach_noisy_embedding
            with self._perturbed(inputs, detach) as record, frozen_batchnorm_stats(self.module):
                noisy_output = self.module(*args, **kwargs)
            clean_logits, noisy_logits = self._logits(output), self._logits(noisy_output)
        divergence, name, positions = self._divergence(inputs, output, clean_logits, noisy_logits)
        self.consistency_loss = cfg.r3f_lambda * divergence
        _add_to_loss(output, self.consistency_loss)
        self._record(
            cfg.mode,
            record,
            divergence=divergence.detach(),
            divergence_name=name,
            positions=positions,
        )
        return output

    def _concat_pass(self, inputs: ForwardInputs) -> tuple[Any, Tensor, Tensor, PerturbationRecord]:
        """One forward over ``cat([x, x])``, noise on the second half; see :mod:`rxf.concat`."""
        if self._batch_norms is None:
            self._batch_norms = concat.batch_norm_modules(self.module)
        concat.check_batch_independent(self._batch_norms)
        batch = concat.batch_size_of(inputs)
        doubled = concat.double_inputs(concat.with_decoder_inputs(self.module, inputs), batch)
        cfg = self.rxf_config
        mask = plugins.input_mask(self.module, inputs) if cfg.noise_type == "neftune" else None
        with concat.perturb_second_half(
            self.rxf_targets.embedding,
            self._sampler,
            cfg.eps,
            batch,
            detach=cfg.detach_noisy_embedding,
            mask=mask,
        ) as record:
            output = self.module(*doubled.args, **doubled.kwargs)
        logits = self._logits(output)
        if logits.dim() == 0 or logits.shape[0] != 2 * batch:
            raise RXFError(
                f"concat mode: the logits have shape {tuple(logits.shape)}, expected the doubled "
                f"batch {2 * batch} first. Use RXFConfig(mode='two_pass')."
            )
        if (
            not isinstance(inputs.kwargs.get(concat.LABELS), Tensor)
            and _loss_of(output) is not None
        ):
            raise RXFError(
                "concat mode: the model returned a loss but got no `labels=` keyword, so rxf "
                "cannot keep the noisy half out of it. Pass the targets as labels=..., or use "
                "RXFConfig(mode='two_pass')."
            )
        return concat.clean_half(output, batch), logits[:batch], logits[batch:], record

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """The inner model's ``save_pretrained`` with R4F's normalized weights baked in.

        The files hold plain ``weight`` keys (``W / σ``, as :func:`unwrap` bakes), so the
        framework's own ``from_pretrained`` reads them; the wrapped model is not changed.
        """
        save = getattr(self.module, "save_pretrained", None)
        if not callable(save):
            raise AttributeError(f"{type(self.module).__name__} has no save_pretrained")
        linears = self.rxf_targets.spectral_linears
        if linears and kwargs.get("state_dict") is None:
            kwargs["state_dict"] = baked_state_dict(self.module, linears)
        return save(save_directory, *args, **kwargs)

    @property
    def last_stats(self) -> dict[str, Any]:
        """Numbers of the last forward, for logging: ``mode``, ``divergence``,
        ``consistency_loss``, ``noise_to_signal`` (measured RMS ratio at the embedding, after
        the cast to its dtype), ``embedding_dtype``, ``positions``."""
        stats = dict(self._stats)
        levels = stats.pop("_levels", None)
        if levels is not None:  # computed on demand: nothing extra per step
            noise_rms, signal_rms = (float(v) for v in levels)
            stats["noise_to_signal"] = noise_rms / max(signal_rms, 1e-30)
        return {k: (v.item() if isinstance(v, Tensor) else v) for k, v in stats.items()}

    def _single_pass(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], noisy: bool, mode: str
    ) -> Any:
        ref = next(iter(self.module.parameters()), None)
        self.consistency_loss = torch.zeros((), device=ref.device if ref is not None else None)
        if not noisy:
            self._stats = {"mode": mode, "consistency_loss": 0.0}
            return self.module(*args, **kwargs)
        # the noisy pass is the only (training) pass here: never detach, or the embedding
        # would get no gradient at all (NEFTune, too, trains through its noisy embeddings)
        with self._perturbed(ForwardInputs(args, kwargs), detach=False) as record:
            output = self.module(*args, **kwargs)
        self._record(mode, record)
        return output

    def _perturbed(self, inputs: ForwardInputs, detach: bool) -> Any:
        mask = None
        if self.rxf_config.noise_type == "neftune":
            mask = plugins.input_mask(self.module, inputs)
        return perturb(
            self.rxf_targets.embedding,
            self._sampler,
            self.rxf_config.eps,
            detach=detach,
            mask=mask,
        )

    def _logits(self, output: Any) -> Tensor:
        logits = plugins.extract_logits(self.module, output)
        if logits is None:
            raise RXFError(
                f"rxf could not find logits in the output of {type(self.module).__name__} "
                f"({type(output).__name__}); return a tensor, a tuple starting with the logits, "
                f"or an object with .logits, or add an rxf_extract_logits plugin."
            )
        return logits

    def _divergence(
        self, inputs: ForwardInputs, clean: Any, clean_logits: Tensor, noisy_logits: Tensor
    ) -> tuple[Tensor, str, int | Tensor]:
        cfg = self.rxf_config
        name = cfg.regression_divergence if clean_logits.shape[-1] == 1 else cfg.divergence
        per_position = self._divergences[name](clean_logits, noisy_logits)
        mask = None
        if clean_logits.dim() == 3 and cfg.token_reduction == "mean":
            mask = plugins.token_mask(self.module, inputs, clean)
        positions = per_position.numel() if mask is None else mask.sum()
        value = reduce_positions(per_position, mask, cfg.token_reduction)
        return value, name, positions

    def _record(self, mode: str, record: PerturbationRecord, **extra: Any) -> None:
        if record.calls == 0:
            raise RXFError(
                f"the embedding module {self.rxf_targets.embedding_name!r} was not called during "
                f"the noisy pass, so no noise reached the model; point RXFConfig(embedding=...) "
                f"at the module that embeds this model's inputs (and compile the wrapped model, "
                f"not a part of it: compiled code ignores hooks added later)."
            )
        stats: dict[str, Any] = {"mode": mode, "embedding_dtype": str(record.dtype)}
        if record.signal_rms is not None and record.noise_rms is not None:
            stats["_levels"] = (record.noise_rms, record.signal_rms)
            self._check_precision(record)
        if "divergence" in extra:
            stats["consistency_loss"] = self.consistency_loss.detach()
        stats.update(extra)
        self._stats = stats

    def _check_precision(self, record: PerturbationRecord) -> None:
        """Warn once when ``eps`` is below the spacing of the embedding dtype at the
        embedding's RMS (the noise is then mostly rounded away by the cast back).

        Checked when the embedding dtype changes (first forward, ``model.half()``, ...), not
        every step: reading the RMS is a host sync.
        """
        eps = self.rxf_config.eps
        if record.dtype == self._checked_dtype or self._warned_precision or eps == 0:
            return
        self._checked_dtype = record.dtype
        if (
            record.dtype is None
            or not record.dtype.is_floating_point
            or torch.finfo(record.dtype).bits >= 32
            or record.signal_rms is None
        ):
            return
        rms = float(record.signal_rms)
        spacing = resolution_at(rms, record.dtype)
        if eps < spacing:
            self._warned_precision = True
            survived = float(record.noise_rms) if record.noise_rms is not None else float("nan")
            warnings.warn(
                f"eps={eps:g} is below the resolution of {record.dtype} at the embedding's RMS "
                f"({rms:.3g}: spacing {spacing:.3g}); the cast back to {record.dtype} rounds "
                f"the noise of many elements (typically half or more) to zero and the rest to "
                f"multiples of the spacing (noise RMS after the cast: {survived:.3g}). Raise eps "
                f"to at least {spacing:.2g}, or keep the embedding in float32 (autocast does); "
                f"last_stats['noise_to_signal'] shows what survives.",
                RXFPrecisionWarning,
                stacklevel=4,
            )


def resolution_at(value: float, dtype: torch.dtype) -> float:
    """The spacing between neighbouring ``dtype`` numbers around ``|value|`` (its ulp).

    Example:
        >>> resolution_at(0.02, torch.bfloat16)  # 2**-6 · 2**-7
        0.0001220703125
    """
    info = torch.finfo(dtype)
    exponent = max(math.floor(math.log2(max(abs(value), info.tiny))), math.log2(info.tiny))
    return float(2.0**exponent * info.eps)


def _forward_with_signature_of(module: nn.Module) -> types.FunctionType:
    """A copy of RXFModel.forward whose signature is the inner forward's (HF Trainer reads it)."""
    base = RXFModel.forward
    fn = types.FunctionType(
        base.__code__, base.__globals__, base.__name__, base.__defaults__, base.__closure__
    )
    fn.__doc__, fn.__qualname__ = base.__doc__, base.__qualname__
    try:
        inner = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return fn
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    fn.__signature__ = inner.replace(parameters=[self_param, *inner.parameters.values()])  # type: ignore[attr-defined]
    return fn


def _loss_of(output: Any) -> Tensor | None:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    return loss if isinstance(loss, Tensor) else None


def _add_to_loss(output: Any, term: Tensor) -> None:
    loss = _loss_of(output)
    if loss is None:
        return
    if isinstance(getattr(output, "loss", None), Tensor):
        output.loss = loss + term
    else:
        output["loss"] = loss + term


def _strip_inner_prefix(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    inner = prefix + _INNER + "."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_inner_prefix(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    inner = prefix + _INNER + "."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


def wrap(
    model: nn.Module, config: RXFConfig | Mapping[str, Any] | None = None, **overrides: Any
) -> RXFModel:
    """Put ``model`` under R3F (R4F with ``spectral_norm_head=True``).

    ``config`` is an :class:`RXFConfig` or a mapping of its fields; keyword ``overrides``
    replace fields and are validated the same way. The embedding (and, for R4F, the head)
    come from the config's paths or from the plugins.

    Example:
        >>> import rxf
        >>> net = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3))
        >>> model = rxf.wrap(net, eps=1e-3, r3f_lambda=0.7)
        >>> logits = model(torch.tensor([[1, 2, 3]]))
        >>> bool(model.consistency_loss >= 0)
        True
    """
    if isinstance(model, RXFModel):
        raise RXFError("this model is already wrapped by rxf; call rxf.unwrap(model) first")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise RXFError(
            "wrap the model before DistributedDataParallel: DDP(rxf.wrap(model)), so both "
            "passes run inside one DDP forward"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"rxf.wrap expects a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None:
        raise RXFError(
            "rxf.wrap got a compiled model (torch.compile / Module.compile): compiled code "
            "ignores the forward hook rxf adds to the embedding, so no noise would arrive. "
            "Compile the wrapped model instead: torch.compile(rxf.wrap(model))."
        )
    base = config if isinstance(config, RXFConfig) else RXFConfig.from_dict(config or {})
    cfg = base.with_overrides(**overrides)
    return RXFModel(model, cfg, discover(model, cfg, apply_r4f=True))


def unwrap(model: nn.Module) -> nn.Module:
    """The original model: R4F's normalized weight baked into plain Linear layers, no hooks.

    Accepts an :class:`RXFModel` or a DistributedDataParallel around one.

    Example:
        >>> import rxf
        >>> net = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3))
        >>> rxf.unwrap(rxf.wrap(net)) is net
        True
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if not isinstance(model, RXFModel):
        raise RXFError(
            f"rxf.unwrap expects a model returned by rxf.wrap, got {type(model).__name__}"
        )
    remove_spectral_norm(model.rxf_targets.spectral_linears)
    return model.module
