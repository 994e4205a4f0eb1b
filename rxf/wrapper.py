"""wrap() / RXFModel / unwrap(): the clean pass, the noisy pass and the consistency term."""

from __future__ import annotations

import contextlib
import copy
import types
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rxf import concat, plugins, signatures
from rxf.adversarial import AdversarialPerturbation, ascend
from rxf.batchnorm import frozen_batchnorm_stats
from rxf.checkpointing import check_ddp_reentrant
from rxf.config import RXFConfig
from rxf.discovery import Targets, discover
from rxf.divergence import reduce_positions
from rxf.errors import (
    RXFError,
    RXFPrecisionWarning,
    RXFUnusedTermWarning,
    RXFZeroTermWarning,
    warn,
)
from rxf.foreign_hooks import probe_other_hooks, watch_other_hooks
from rxf.inputs import ForwardInputs
from rxf.noise import NoiseSampler, declared_extras, lengths_from_starts
from rxf.outputs import check_distinct, loss_of, own_copies, with_term
from rxf.perturbation import (
    Cached,
    PerturbationRecord,
    capture_outputs,
    perturb,
    reusable,
    substitute,
)
from rxf.precision import precision_warning
from rxf.rng import RNGState, replayed_stream
from rxf.spectral import apply_spectral_norm, bake_r4f, r4f_linears
from rxf.state import complete_keys, drop_tied_aliases

_INNER = "module"


class RXFModel(nn.Module):
    """A model under R3F/R4F. Build it with :func:`wrap`; undo it with :func:`unwrap`.

    In training mode a forward runs the clean pass, then a noisy pass (noise on the
    embedding output), and returns the clean pass's output; ``consistency_loss`` holds
    ``r3f_lambda · divergence`` and is already added to the output's ``loss`` when it has
    one. With ``mode="concat"`` the two passes are one forward over the doubled batch
    (:mod:`rxf.concat`). With ``r3f_lambda=0`` it is one noisy pass (noise only). In eval mode
    it is one plain forward. Unknown attributes are read from the inner model, whose forward
    signature the wrapper shows. The wrapper starts in the inner model's train/eval mode.

    The term of a training forward reaches the returned loss whatever container holds it
    (a ``ModelOutput`` or dict, an object with ``.loss``, a frozen dataclass, a named tuple,
    a tuple starting with a 0-dim loss); when the model returns no loss, add
    ``model.consistency_loss`` to yours. A term that is neither added to a returned loss nor
    read before the next training forward triggers one :class:`rxf.RXFUnusedTermWarning`.
    The term is released (detached) once its gradient has been computed, and copies,
    pickles and ``state_dict`` never carry a graph.
    """

    def __init__(self, module: nn.Module, config: RXFConfig, targets: Targets) -> None:
        super().__init__()
        # a view of the inner model: its parameters, buffers and children are the wrapper's
        # own (the same dicts), so parameter names and state_dict keys are the inner
        # model's under every stack that reads either (DDP, FSDP, DeepSpeed, PEFT, Lightning)
        self.__dict__[_INNER] = module
        for name in _SHARED:
            self.__dict__[name] = module.__dict__[name]
        self.training = module.training  # not .train(): keeps the inner model's own modes
        self.rxf_config = config
        self.rxf_targets = targets
        self._sampler = plugins.noise_types()[config.noise_type]
        self._extras = declared_extras(self._sampler)
        self._embedding_calls = config.embedding_calls or plugins.embedding_calls(module)
        self._divergences = plugins.divergences()
        self._warned_precision = False
        self._warned_unused = False
        self._checked_zero = False
        # later passes reuse the clean pass's lookups of the same ids (rxf.perturbation)
        self._reuse_lookups = reusable(targets.embedding)
        self._checked_dtype: torch.dtype | None = None
        self._batch_norms: list[tuple[str, nn.Module]] | None = None
        self._checked: dict[str, int] = {}
        self._term: Tensor = torch.zeros(())
        self._term_consumed = True
        self._second: Any = None  # R-Drop: the second pass's output of the last forward
        self._second_consumed = True
        self._stats: dict[str, Any] = {"mode": "none"}
        # each tied parameter is stored once, under its first name (see rxf.state)
        self._register_state_dict_hook(drop_tied_aliases)
        self._register_load_state_dict_pre_hook(complete_keys, with_module=True)
        self._bind_forward()

    def _bind_forward(self) -> None:
        forward = signatures.forward_showing(RXFModel.forward, self.module)
        self.forward = types.MethodType(forward, self)  # type: ignore[method-assign]

    @property
    def consistency_loss(self) -> Tensor:
        """``r3f_lambda · divergence`` of the last training forward: a 0-dim float32 tensor
        with its graph until its gradient has been computed; zero in eval mode and in
        noise-only mode. Reading it counts as using the term."""
        self._term_consumed = True
        return self._term

    @property
    def second_output(self) -> Any:
        """``method="rdrop"``: the second pass's output of the last training forward (with
        its graph), for a task loss computed outside the model: R-Drop's loss is
        ``½·(L(out) + L(model.second_output)) + model.consistency_loss``. Kept also when the
        model returned a loss (both passes' losses are then already averaged into the
        returned one). ``None`` for the other methods and in eval mode. Reading it counts as
        using it."""
        self._second_consumed = True
        return self._second

    def _set_term(self, term: Tensor, consumed: bool) -> None:
        self._term, self._term_consumed = term, consumed
        if term.requires_grad:
            owner, made = weakref.ref(self), id(term)

            def release(grad: Tensor) -> None:  # the step's backward reached the term
                me = owner()
                if me is not None and id(me._term) == made:
                    me._term_consumed = True
                    me._term = me._term.detach()

            term.register_hook(release)

    def _check_unused_term(self) -> None:
        """Warn once when the last training forward's term, or R-Drop's second pass, reached
        no loss (one message naming every part that was missed)."""
        if self._warned_unused:
            return
        term = not self._term_consumed and self._term.requires_grad
        second = not self._second_consumed
        if not (term or second):
            return
        self._warned_unused = True
        parts = []
        if term:
            parts.append(
                "the consistency term of the last training forward was never used: the model "
                "returned no loss to add it to, model.consistency_loss was not read and no "
                "gradient reached it, so that step trained without the regularizer. Add it to "
                "your loss: loss = my_loss(out.logits, y) + model.consistency_loss (with a "
                "Hugging Face Trainer that computes the loss itself, e.g. with label "
                "smoothing, use rxf_transformers.RXFTrainer)."
            )
        if second:
            parts.append(
                "method='rdrop': the model returned no loss and model.second_output was not "
                "read, so the last step's task loss covered one of R-Drop's two passes. "
                "Compute it on both: loss = (my_loss(out, y) + my_loss(model.second_output, "
                "y)) / 2 + model.consistency_loss."
            )
        warn(" Also, ".join(parts), RXFUnusedTermWarning)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # the class is made per inner class (see _wrapper_class): rebuild it from that class
        return (_new_wrapper, (type(self.module),), self.__getstate__())

    def __getstate__(self) -> dict[str, Any]:
        if self.rxf_targets.spectral_linears:
            raise RXFError(
                "a model with R4F (spectral_norm_head=True) cannot be pickled whole (torch.save "
                "of the model object): torch serializes parametrized modules only through "
                "state_dict(). Save torch.save(model.state_dict(), path), the framework's own "
                "save method called on the wrapper (R4F baked in), or the plain model "
                "rxf.unwrap(model) (R4F baked in)."
            )
        return self._portable_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bind_forward()

    def __deepcopy__(self, memo: dict[int, Any]) -> RXFModel:
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self._portable_state(), memo))
        clone._bind_forward()
        return clone

    def _portable_state(self) -> dict[str, Any]:
        """The instance state without the bound forward and without any autograd graph."""
        state = self.__dict__.copy()
        state.pop("forward", None)
        state["_term"] = self._term.detach()
        state["_second"] = None
        return state

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get(_INNER)
            if inner is None or name == _INNER:
                raise
            method = plugins.wrapper_methods().get(name)
            if method is not None:  # a method a plugin adds to the wrapper
                return types.MethodType(method, self)
            return getattr(inner, name)

    def train(self, mode: bool = True) -> RXFModel:
        """Set the train/eval mode of the inner model (its children are shared) and the wrapper."""
        self.module.train(mode)  # the inner model and (shared) children
        self.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the inner model's forward under R3F; arguments are the inner forward's.

        Training mode: the clean pass, then the noisy pass (noise on the embedding output,
        BatchNorm statistics frozen), ``consistency_loss = r3f_lambda · divergence(clean
        logits, noisy logits)`` (Aghajanyan et al., 2020, Eq. 1; the reference
        ``sentence_prediction_r3f`` / ``label_smoothed_cross_entropy_r3f`` criteria), added to
        the returned loss. ``mode="concat"``: one forward over the doubled batch.
        ``r3f_lambda=0``: one noisy pass. Eval mode: one plain forward, zero term.

        Returns:
            The clean pass's output, its loss (if any) with the term added.

        Raises:
            RXFError: no noise reached the model, no logits found, another hook perturbs the
                embedding, or a combination rxf refuses (see docs/distributed.md).
        """
        if self.training and self.__dict__.get("_unwrapped"):  # eval: a plain forward
            raise RXFError(
                "this wrapper was undone by rxf.unwrap (R4F baked out, the model handed back), "
                "so it no longer regularizes as configured. Train the model rxf.unwrap "
                "returned, or wrap it again: rxf.wrap(model, ...). To save during training, "
                "save model.state_dict() or use the framework's save method on the wrapper."
            )
        cfg = self.rxf_config
        if not self.training:
            return self._single_pass(args, kwargs, noisy=False, mode="eval")
        self._check_unused_term()
        if cfg.r3f_lambda == 0:
            return self._single_pass(args, kwargs, noisy=True, mode="noise_only")
        inputs = ForwardInputs(args, kwargs)
        extra: dict[str, Any] = {}
        self._second, self._second_consumed = None, True
        if cfg.mode == "concat":
            output, clean_logits, noisy_logits, record = self._concat_pass(inputs)
            noisy_output = None
        else:
            output, noisy_output, clean_logits, noisy_logits, record = self._two_pass(inputs, extra)
        divergence, name, positions = self._divergence(inputs, output, clean_logits, noisy_logits)
        if not self._checked_zero:
            self._check_zero_term(clean_logits, noisy_logits)
        if cfg.method == "rdrop":
            output, term, added = self._rdrop_loss(output, noisy_output, divergence)
        else:
            term = cfg.r3f_lambda * divergence
            output, added = with_term(output, term)
        self._set_term(term, consumed=added)
        self._record(
            cfg.mode,
            record,
            divergence=divergence.detach(),
            divergence_name=name,
            positions=positions,
            **extra,
        )
        return output

    def _two_pass(
        self, inputs: ForwardInputs, extra: dict[str, Any]
    ) -> tuple[Any, Any, Tensor, Tensor, PerturbationRecord]:
        """The clean pass, SMART's ascent (``method="smart"``), then the second pass (noisy,
        or R-Drop's plain dropout pass); the clean pass's embedding lookups are reused by the
        later passes when that is exact (:func:`rxf.perturbation.capture_outputs`)."""
        cfg, args, kwargs = self.rxf_config, inputs.args, inputs.kwargs
        start = RNGState.capture(self._device()) if cfg.share_dropout_masks else None
        lookups: list[Cached] = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._watched())
            if self._reuse_lookups:
                lookups = stack.enter_context(capture_outputs(self.rxf_targets.embedding))
            output = self.module(*own_copies(args), **own_copies(kwargs))
        clean_logits = self._logits(output)
        check_ddp_reentrant(clean_logits, self._checked)
        sampler = None
        if cfg.method == "smart":
            ascent = self._ascend(inputs, output, clean_logits, lookups)
            sampler, extra["perturbation_to_eps"] = ascent.fixed(), ascent.size()
        with (
            self._perturbed(inputs, cfg.detach_noisy_embedding, start, sampler, lookups) as record,
            frozen_batchnorm_stats(self.module),
        ):
            second = self.module(*own_copies(args), **own_copies(kwargs))
        check_distinct(output, second, type(self.module).__name__)
        return output, second, clean_logits, self._logits(second), record

    def _check_zero_term(self, clean_logits: Tensor, noisy_logits: Tensor) -> None:
        """Warn once when the first training forward's passes gave identical logits (one host
        sync, at the first step only): no dropout active and no noise that survived."""
        self._checked_zero = True
        if torch.compiler.is_compiling() or not torch.equal(clean_logits, noisy_logits):
            return
        cfg, model = self.rxf_config, type(self.module).__name__
        if cfg.method == "rdrop" or cfg.eps == 0:
            cause = (
                f"without noise (eps=0) only dropout makes them differ, and {model} has none "
                f"active. Enable dropout (e.g. hidden_dropout_prob / drop_rate in the model's "
                f"config), or use a method with noise: RXFConfig.preset('r3f') or 'smart'."
            )
        else:
            start = "smart_init_std" if cfg.method == "smart" else "eps"
            cause = (
                f"the perturbation did not change a single logit of {model}: it is below the "
                f"precision the model computes in (autocast to bfloat16/float16 rounds a small "
                f"perturbation of float32 embeddings away inside the first layer). Raise "
                f"{start}, or train in float32."
            )
        warn(
            f"the two passes of the first training forward gave identical logits, so the "
            f"{cfg.method} term is exactly 0: {cause}",
            RXFZeroTermWarning,
        )

    def _rdrop_loss(self, output: Any, second: Any, divergence: Tensor) -> tuple[Any, Tensor, bool]:
        """R-Drop's objective (Liang et al., 2021, §2.1: ``L_NLL + α·L_KL``) halved:
        ``½(L₁ + L₂) + (α/2)·L_KL`` with
        ``L_KL = ½·D`` (D: the divergence, KL(P₁‖P₂) + KL(P₂‖P₁) by default); the term is
        ``(α/4)·D``. The model's own loss of both passes is averaged into the returned loss;
        without one, ``second_output`` is kept for the caller's loss."""
        term = self.rxf_config.r3f_lambda * divergence / 4
        first_loss, second_loss = loss_of(output), loss_of(second)
        if (first_loss is None) != (second_loss is None):
            raise RXFError(
                f"method='rdrop': {type(self.module).__name__} returned a loss from one pass "
                f"only; R-Drop averages the task loss of both passes. Return a loss from every "
                f"training forward, or none (and compute it on out and model.second_output)."
            )
        if first_loss is None or second_loss is None:
            self._second, self._second_consumed = second, False
            return output, term, False
        output, added = with_term(output, term, task_loss=0.5 * (first_loss + second_loss))
        self._second, self._second_consumed = second, True  # its loss is in the output's
        return output, term, added

    def _ascend(
        self, inputs: ForwardInputs, clean: Any, clean_logits: Tensor, lookups: list[Cached]
    ) -> AdversarialPerturbation:
        """SMART's ascent (:func:`rxf.adversarial.ascend`): each pass runs the inner model
        with the current perturbation (BatchNorm statistics frozen) and gives the divergence
        from the clean logits (held fixed)."""
        cfg = self.rxf_config
        if torch.is_inference_mode_enabled():
            raise RXFError(
                "method='smart' takes gradients w.r.t. its perturbation in every training "
                "forward, which torch.inference_mode() forbids. For inference, put the model "
                "in eval mode (model.eval(): one plain forward); to train, leave "
                "inference_mode."
            )
        ascent = AdversarialPerturbation(
            self._sampler,
            cfg.smart_init_std,
            eps=cfg.eps,
            step_size=cfg.smart_step_size,
            norm=cfg.smart_norm,
            level=cfg.smart_norm_level,
            batch=clean_logits.shape[0] if clean_logits.dim() else None,
        )
        target = clean_logits.detach()

        def divergence_at(sampler: NoiseSampler) -> Tensor:
            with (
                self._perturbed(inputs, True, None, sampler, lookups) as record,
                frozen_batchnorm_stats(self.module),
            ):
                output = self.module(*own_copies(inputs.args), **own_copies(inputs.kwargs))
            self._check_called(record)
            return self._divergence(inputs, clean, target, self._logits(output))[0]

        ascend(ascent, cfg.smart_steps, divergence_at)
        return ascent

    def _device(self) -> torch.device:
        weight = next(iter(self.rxf_targets.embedding.parameters()), None)
        if weight is None:
            weight = next(iter(self.module.parameters()), None)
        return weight.device if weight is not None else torch.device("cpu")

    def _watched(self) -> Any:
        if self.rxf_targets.embedding is self.module:  # R-Drop on a model without one
            return contextlib.nullcontext()
        return watch_other_hooks(self.rxf_targets.embedding, self.rxf_targets.embedding_name)

    def _concat_pass(self, inputs: ForwardInputs) -> tuple[Any, Tensor, Tensor, PerturbationRecord]:
        """One forward over ``cat([x, x])``, noise on the second half; see :mod:`rxf.concat`."""
        if self._batch_norms is None:
            self._batch_norms = concat.batch_norm_modules(self.module)
        concat.check_batch_independent(self._batch_norms)
        batch = concat.batch_size_of(inputs)
        completed = plugins.prepare_concat_inputs(self.module, inputs)  # e.g. decoder inputs
        doubled = concat.double_inputs(completed, batch)
        cfg = self.rxf_config
        with (
            self._watched(),
            perturb(
                self.rxf_targets.embedding,
                self._sampler,
                cfg.eps,
                detach=cfg.detach_noisy_embedding,
                rows=slice(batch, None),
                expect_rows=2 * batch,
                calls=self._embedding_calls,  # type: ignore[arg-type]
                layout=self._layout(inputs),
            ) as record,
        ):
            output = self.module(*doubled.args, **doubled.kwargs)
        logits = self._logits(output)
        if logits.dim() == 0 or logits.shape[0] != 2 * batch:
            raise RXFError(
                f"concat mode: the logits have shape {tuple(logits.shape)}, expected the doubled "
                f"batch {2 * batch} first. Use RXFConfig(mode='two_pass')."
            )
        if not isinstance(inputs.kwargs.get(concat.LABELS), Tensor) and loss_of(output) is not None:
            raise RXFError(
                "concat mode: the model returned a loss but got no `labels=` keyword, so rxf "
                "cannot keep the noisy half out of it. Pass the targets as labels=..., or use "
                "RXFConfig(mode='two_pass')."
            )
        return concat.clean_half(output, batch), logits[:batch], logits[batch:], record

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
        self._set_term(torch.zeros((), device=self._device()), consumed=True)
        if not noisy:
            self._stats = {"method": self.rxf_config.method, "mode": mode, "consistency_loss": 0.0}
            return self.module(*args, **kwargs)
        # the noisy pass is the only (training) pass here: never detach, or the embedding
        # would get no gradient at all (NEFTune, too, trains through its noisy embeddings)
        with self._perturbed(ForwardInputs(args, kwargs), detach=False) as record:
            output = self.module(*args, **kwargs)
        self._record(mode, record)
        return output

    @contextlib.contextmanager
    def _perturbed(
        self,
        inputs: ForwardInputs,
        detach: bool,
        replay: RNGState | None = None,
        sampler: NoiseSampler | None = None,
        lookups: list[Cached] | None = None,
    ) -> Iterator[PerturbationRecord]:
        """The noisy pass's scope: other hooks watched, noise on the embedding calls; with
        ``replay`` the RNG rewinds to it (same dropout masks) and the noise is drawn aside.
        ``sampler`` replaces the configured noise (SMART's perturbation); with
        ``method="rdrop"`` nothing is added (the second pass is a plain dropout pass).
        ``lookups``: the clean pass's embedding outputs, reused for the same ids."""
        if self.rxf_config.method == "rdrop":
            with contextlib.ExitStack() as stack:
                stack.enter_context(self._watched())
                if lookups:
                    stack.enter_context(substitute(self.rxf_targets.embedding, lookups))
                yield PerturbationRecord()
            return
        sampler = sampler or self._sampler
        with contextlib.ExitStack() as stack:
            if replay is not None:
                draw = stack.enter_context(replayed_stream(self._device(), replay))
                base = sampler
                sampler = lambda e, eps, **kw: draw(base, e, eps, **kw)  # noqa: E731
            stack.enter_context(self._watched())
            record = stack.enter_context(
                perturb(
                    self.rxf_targets.embedding,
                    sampler,
                    self.rxf_config.eps,
                    detach=detach,
                    calls=self._embedding_calls,  # type: ignore[arg-type]
                    layout=self._layout(inputs),
                    reuse=lookups,
                )
            )
            yield record

    def _layout(self, inputs: ForwardInputs) -> dict[str, Tensor | None]:
        """The extras the noise declares (``mask``, ``lengths``), computed only for it."""
        if not self._extras:
            return {}
        mask = plugins.input_mask(self.module, inputs)
        layout: dict[str, Tensor | None] = {"mask": mask}
        if "lengths" in self._extras:
            starts = plugins.sequence_starts(self.module, inputs)
            if starts is None and mask is not None:
                starts = torch.zeros_like(mask, dtype=torch.bool)
            layout["lengths"] = None if starts is None else lengths_from_starts(starts, mask)
        return {k: v for k, v in layout.items() if k in self._extras}

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
        if clean_logits.dim() == 1:  # (batch,): one real value per example (a squeezed head)
            clean_logits, noisy_logits = clean_logits.unsqueeze(-1), noisy_logits.unsqueeze(-1)
        name = cfg.regression_divergence if clean_logits.shape[-1] == 1 else cfg.divergence
        per_position = self._divergences[name](clean_logits, noisy_logits)
        mask = None
        if clean_logits.dim() == 3 and cfg.token_reduction == "mean":
            mask = plugins.token_mask(self.module, inputs, clean, clean_logits)
        positions = per_position.numel() if mask is None else mask.sum()
        value = reduce_positions(per_position, mask, cfg.token_reduction)
        return value, name, positions

    def _check_called(self, record: PerturbationRecord) -> None:
        if record.calls == 0 and self.rxf_config.method != "rdrop":
            raise RXFError(
                f"the embedding module {self.rxf_targets.embedding_name!r} was not called during "
                f"the noisy pass, so no noise reached the model; point RXFConfig(embedding=...) "
                f"at the module that embeds this model's inputs (and compile the wrapped model, "
                f"not a part of it: compiled code ignores hooks added later). A forward given "
                f"inputs_embeds instead of token ids bypasses the embedding: pass the ids."
            )

    def _record(self, mode: str, record: PerturbationRecord, **extra: Any) -> None:
        self._check_called(record)
        stats: dict[str, Any] = {"method": self.rxf_config.method, "mode": mode}
        if self.rxf_config.method != "rdrop":  # R-Drop's passes have no noise
            stats["embedding_dtype"] = str(record.dtype)
            stats["embedding_calls"] = record.calls
            stats["perturbed_calls"] = record.perturbed
        if record.signal_rms is not None and record.noise_rms is not None:
            stats["_levels"] = (record.noise_rms, record.signal_rms)
            self._check_precision(record)
        if "divergence" in extra:
            stats["consistency_loss"] = self._term.detach()
        stats.update(extra)
        self._stats = stats

    def _check_precision(self, record: PerturbationRecord) -> None:
        """Warn once when ``eps`` is below the spacing of the embedding dtype at the
        embedding's RMS (:func:`rxf.precision.precision_warning`); under ``torch.autocast``
        to a half dtype, of that dtype (the following layers compute in it).

        Checked when that dtype changes (first forward, ``model.half()``, ...), not
        every step: reading the RMS is a host sync.
        """
        eps, dtype = self.rxf_config.eps, record.dtype
        if self._warned_precision or eps == 0:
            return
        compute = _autocast_dtype(self._device().type)
        autocast = dtype in (torch.float32, torch.float64) and compute is not None
        if autocast:  # the next layers compute in the autocast dtype
            dtype = compute
        if dtype == self._checked_dtype:
            return
        self._checked_dtype = dtype
        if dtype is None or record.signal_rms is None:
            return
        survived = float(record.noise_rms) if record.noise_rms is not None else float("nan")
        message = precision_warning(eps, dtype, float(record.signal_rms), survived, autocast)
        if message:
            self._warned_precision = True
            warn(message, RXFPrecisionWarning)


_SHARED = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The half-precision dtype ``torch.autocast`` computes in on ``device_type``, if on."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        dtype = torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return None
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def _wrapper_class(inner: type) -> type[RXFModel]:
    return signatures.subclass_showing(RXFModel, inner)


def _new_wrapper(inner: type) -> RXFModel:
    """An empty wrapper of the class :func:`_wrapper_class` makes for ``inner`` (unpickling)."""
    return RXFModel.__new__(_wrapper_class(inner))


def wrap(
    model: nn.Module,
    config: RXFConfig | Mapping[str, Any] | str | None = None,
    **overrides: Any,
) -> RXFModel:
    """Put ``model`` under R3F (R4F with ``spectral_norm_head=True``).

    ``config`` is an :class:`RXFConfig`, a mapping of its fields, or a preset's name
    (``"r3f"``, ``"r4f"``, ``"rdrop"``, ``"neftune"``, ``"smart"``: :meth:`RXFConfig.preset`);
    keyword ``overrides`` replace fields and are validated the same way. The embedding
    (and, for R4F, the head) come from the config's paths or from the plugins.

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
    if isinstance(config, str):
        base = RXFConfig.preset(config)
    else:
        base = config if isinstance(config, RXFConfig) else RXFConfig.from_dict(config or {})
    cfg = base.with_overrides(**overrides)
    targets = discover(model, cfg)
    probe_other_hooks(targets.embedding, targets.embedding_name)
    if targets.head is not None:
        targets.spectral_linears = apply_spectral_norm(targets.head, cfg.spectral_norm_scope)
    return _wrapper_class(type(model))(model, cfg, targets)


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
    bake_r4f(r4f_linears(model.module))  # copies made since wrap() too (PEFT)
    model.__dict__["_unwrapped"] = True
    return model.module
