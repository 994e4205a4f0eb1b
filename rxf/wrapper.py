"""wrap() / RXFModel / unwrap(): the clean pass, the noisy pass and the consistency term."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import types
import warnings
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from rxf import concat, plugins
from rxf.batchnorm import frozen_batchnorm_stats
from rxf.config import RXFConfig
from rxf.discovery import Targets, discover
from rxf.divergence import reduce_positions
from rxf.errors import RXFError, RXFPrecisionWarning, RXFUnusedTermWarning
from rxf.inputs import ForwardInputs
from rxf.noise import declared_extras, lengths_from_starts
from rxf.perturbation import PerturbationRecord, perturb, probe_other_hooks, watch_other_hooks
from rxf.rng import RNGState, replayed_stream
from rxf.spectral import apply_spectral_norm

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
        self._checked_dtype: torch.dtype | None = None
        self._batch_norms: list[tuple[str, nn.Module]] | None = None
        self._reentrant_checked: int | None = None
        self._term: Tensor = torch.zeros(())
        self._term_consumed = True
        self._stats: dict[str, Any] = {"mode": "none"}
        # each tied parameter is stored once, under its first name (as save_pretrained does)
        self._register_state_dict_hook(_drop_tied_aliases)
        self._register_load_state_dict_pre_hook(_complete_keys, with_module=True)
        self._bind_forward()

    def _bind_forward(self) -> None:
        self.forward = types.MethodType(_forward_with_signature_of(self.module), self)  # type: ignore[method-assign]

    @property
    def consistency_loss(self) -> Tensor:
        """``r3f_lambda · divergence`` of the last training forward: a 0-dim float32 tensor
        with its graph until its gradient has been computed; zero in eval mode and in
        noise-only mode. Reading it counts as using the term."""
        self._term_consumed = True
        return self._term

    def _set_term(self, term: Tensor, consumed: bool) -> None:
        self._term, self._term_consumed = term, consumed
        if term.requires_grad and not torch.compiler.is_compiling():
            owner, made = weakref.ref(self), id(term)

            def release(grad: Tensor) -> None:  # the step's backward reached the term
                me = owner()
                if me is not None and id(me._term) == made:
                    me._term_consumed = True
                    me._term = me._term.detach()

            term.register_hook(release)

    def _check_unused_term(self) -> None:
        if self._term_consumed or self._warned_unused or not self._term.requires_grad:
            return
        self._warned_unused = True
        warnings.warn(
            "the consistency term of the last training forward was never used: the model "
            "returned no loss to add it to, model.consistency_loss was not read and no "
            "gradient reached it, so that step trained without the regularizer. Add it to "
            "your loss: loss = my_loss(out.logits, y) + model.consistency_loss (with a Hugging "
            "Face Trainer that computes the loss itself, e.g. with label smoothing, use "
            "rxf_transformers.RXFTrainer).",
            RXFUnusedTermWarning,
            stacklevel=4,
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        # the class is made per inner class (see _wrapper_class): rebuild it from that class
        return (_new_wrapper, (type(self.module),), self.__getstate__())

    def __getstate__(self) -> dict[str, Any]:
        if self.rxf_targets.spectral_linears:
            raise RXFError(
                "a model with R4F (spectral_norm_head=True) cannot be pickled whole (torch.save "
                "of the model object): torch serializes parametrized modules only through "
                "state_dict(). Save torch.save(model.state_dict(), path), "
                "model.save_pretrained(path), or the plain model rxf.unwrap(model) (R4F baked "
                "in)."
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
        return state

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get(_INNER)
            if inner is None or name == _INNER:
                raise
            return getattr(inner, name)

    def train(self, mode: bool = True) -> RXFModel:
        self.module.train(mode)  # the inner model and (shared) children
        self.training = mode
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        cfg = self.rxf_config
        if not self.training:
            return self._single_pass(args, kwargs, noisy=False, mode="eval")
        self._check_unused_term()
        if cfg.r3f_lambda == 0:
            return self._single_pass(args, kwargs, noisy=True, mode="noise_only")
        inputs = ForwardInputs(args, kwargs)
        if cfg.mode == "concat":
            output, clean_logits, noisy_logits, record = self._concat_pass(inputs)
        else:
            start = RNGState.capture(self._device()) if cfg.share_dropout_masks else None
            with self._watched():
                output = self.module(*_own_copies(args), **_own_copies(kwargs))
            self._check_ddp_reentrant(output)
            with (
                self._perturbed(inputs, cfg.detach_noisy_embedding, start) as record,
                frozen_batchnorm_stats(self.module),
            ):
                noisy_output = self.module(*_own_copies(args), **_own_copies(kwargs))
            _check_distinct(output, noisy_output, type(self.module).__name__)
            clean_logits, noisy_logits = self._logits(output), self._logits(noisy_output)
        divergence, name, positions = self._divergence(inputs, output, clean_logits, noisy_logits)
        term = cfg.r3f_lambda * divergence
        output, added = _with_term(output, term)
        self._set_term(term, consumed=added)
        self._record(
            cfg.mode,
            record,
            divergence=divergence.detach(),
            divergence_name=name,
            positions=positions,
        )
        return output

    def _device(self) -> torch.device:
        weight = next(iter(self.rxf_targets.embedding.parameters()), None)
        if weight is None:
            weight = next(iter(self.module.parameters()), None)
        return weight.device if weight is not None else torch.device("cpu")

    def _watched(self) -> Any:
        return watch_other_hooks(self.rxf_targets.embedding, self.rxf_targets.embedding_name)

    def _check_ddp_reentrant(self, output: Any) -> None:
        """Refuse two passes with reentrant checkpointing inside a non-static DDP forward:
        every checkpointed parameter would be marked ready twice in one backward."""
        ddp = getattr(nn.parallel.DistributedDataParallel, "_active_ddp_module", None)
        if ddp is None or getattr(ddp, "static_graph", False) or self._reentrant_checked == id(ddp):
            return
        self._reentrant_checked = id(ddp)
        if _has_reentrant_checkpoint(self._logits(output)):
            raise RXFError(
                "two-pass R3F under DistributedDataParallel with reentrant gradient "
                "checkpointing (use_reentrant=True): both passes re-run the checkpointed layers "
                "in one backward, so DDP would mark their parameters ready twice ('Expected to "
                "mark a variable ready only once'). Use RXFConfig(mode='concat') (one forward), "
                "DDP(..., static_graph=True), or use_reentrant=False."
            )

    def _concat_pass(self, inputs: ForwardInputs) -> tuple[Any, Tensor, Tensor, PerturbationRecord]:
        """One forward over ``cat([x, x])``, noise on the second half; see :mod:`rxf.concat`."""
        if self._batch_norms is None:
            self._batch_norms = concat.batch_norm_modules(self.module)
        concat.check_batch_independent(self._batch_norms)
        batch = concat.batch_size_of(inputs)
        doubled = concat.double_inputs(concat.with_decoder_inputs(self.module, inputs), batch)
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
        if kwargs.get("state_dict") is not None:
            return save(save_directory, *args, **kwargs)
        # baked while the state dicts are read, however the framework reads them (PEFT
        # collects an adapter's modules_to_save from their own state dicts)
        with baked_state_dicts(r4f_linears(self.module)):
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
        self._set_term(torch.zeros((), device=self._device()), consumed=True)
        if not noisy:
            self._stats = {"mode": mode, "consistency_loss": 0.0}
            return self.module(*args, **kwargs)
        # the noisy pass is the only (training) pass here: never detach, or the embedding
        # would get no gradient at all (NEFTune, too, trains through its noisy embeddings)
        with self._perturbed(ForwardInputs(args, kwargs), detach=False) as record:
            output = self.module(*args, **kwargs)
        self._record(mode, record)
        return output

    @contextlib.contextmanager
    def _perturbed(
        self, inputs: ForwardInputs, detach: bool, replay: RNGState | None = None
    ) -> Iterator[PerturbationRecord]:
        """The noisy pass's scope: other hooks watched, noise on the embedding calls; with
        ``replay`` the RNG rewinds to it (same dropout masks) and the noise is drawn aside."""
        sampler = self._sampler
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
        stats: dict[str, Any] = {
            "mode": mode,
            "embedding_dtype": str(record.dtype),
            "embedding_calls": record.calls,
            "perturbed_calls": record.perturbed,
        }
        if record.signal_rms is not None and record.noise_rms is not None:
            stats["_levels"] = (record.noise_rms, record.signal_rms)
            self._check_precision(record)
        if "divergence" in extra:
            stats["consistency_loss"] = self._term.detach()
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
    try:
        inner = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return _forward_copy(None)
    return _forward_copy(inner)


def _forward_copy(inner: inspect.Signature | None) -> types.FunctionType:
    """RXFModel.forward's code under the signature ``(self, *inner parameters)``."""
    base = RXFModel.forward
    fn = types.FunctionType(
        base.__code__, base.__globals__, base.__name__, base.__defaults__, base.__closure__
    )
    fn.__doc__, fn.__qualname__ = base.__doc__, base.__qualname__
    if inner is not None:
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        fn.__signature__ = inner.replace(parameters=[self_param, *inner.parameters.values()])  # type: ignore[attr-defined]
    return fn


_SHARED = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")
_CLASSES: dict[type, type[RXFModel]] = {}


def _wrapper_class(inner: type) -> type[RXFModel]:
    """``RXFModel`` whose *class* ``forward`` shows the inner class's signature, made once per
    inner class: Hugging Face's Trainer reads label names (``eval_loss``) and ``return_loss``
    from ``type(model).forward``, where an instance's signature does not reach."""
    cls = _CLASSES.get(inner)
    if cls is None:
        try:
            params = list(inspect.signature(inner.forward).parameters.values())[1:]  # type: ignore[attr-defined]
            signature: inspect.Signature | None = inspect.Signature(params)
        except (TypeError, ValueError, AttributeError):
            signature = None
        namespace = {
            "forward": _forward_copy(signature),
            "__module__": RXFModel.__module__,
            "__qualname__": RXFModel.__qualname__,
            "__doc__": RXFModel.__doc__,
        }
        cls = _CLASSES[inner] = type(RXFModel.__name__, (RXFModel,), namespace)
    return cls


def _new_wrapper(inner: type) -> RXFModel:
    """An empty wrapper of the class :func:`_wrapper_class` makes for ``inner`` (unpickling)."""
    return RXFModel.__new__(_wrapper_class(inner))


_R4F_MARK = "rxf_r4f"


def mark_r4f(linears: list[nn.Linear]) -> None:
    """Tag rxf's spectral-norm parametrizations; copies of the layer (PEFT's
    ``modules_to_save``, ``copy.deepcopy``) carry the tag along."""
    for linear in linears:
        setattr(parametrize_list(linear)[0], _R4F_MARK, True)


def parametrize_list(linear: nn.Module) -> Any:
    return linear.parametrizations.weight  # type: ignore[union-attr]


def r4f_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers under ``model`` that carry rxf's R4F normalization, copies included."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and parametrize.is_parametrized(m, "weight")
        and any(getattr(p, _R4F_MARK, False) for p in parametrize_list(m))
    ]


def bake_r4f(linears: list[nn.Linear]) -> None:
    """Replace R4F's parametrization by a plain ``weight`` holding ``W / σ`` (eval mode).

    Unlike ``remove_parametrizations`` this leaves deep copies of a layer intact: a copy
    shares its parametrized class, from which torch deletes the ``weight`` property.
    """
    baked = []
    for linear in linears:
        training = linear.training
        linear.eval()
        with torch.no_grad():
            weight = linear.weight.detach().clone()
        linear.train(training)
        baked.append((linear, weight, parametrize_list(linear).original.requires_grad))
    for linear, weight, requires_grad in baked:
        plain = next(c for c in type(linear).__mro__ if not c.__name__.startswith("Parametrized"))
        del linear._modules["parametrizations"]
        linear.__class__ = plain
        linear.weight = nn.Parameter(weight, requires_grad=requires_grad)


@contextlib.contextmanager
def baked_state_dicts(linears: list[nn.Linear]) -> Iterator[None]:
    """While open, the state dict of every module holding one of ``linears`` stores that
    layer as a plain ``weight`` (``W / σ``, as :func:`unwrap` bakes) instead of the
    parametrization's ``original`` / ``_u`` / ``_v``; the layers themselves do not change."""
    handles = [linear._register_state_dict_hook(_bake_weight) for linear in linears]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _bake_weight(linear: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "parametrizations.weight.")]:
        del state[key]
    training = linear.training
    linear.eval()  # the weight the layer uses at inference: no extra power step
    with torch.no_grad():
        state[prefix + "weight"] = cast(Tensor, linear.weight).detach().clone()
    linear.train(training)


def _loss_of(output: Any) -> Tensor | None:
    """The loss a forward returned: ``.loss`` / ``["loss"]``, or the first element of a
    plain tuple or list when it is a 0-dim floating-point tensor (``return_dict=False``)."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
    elif isinstance(output, (tuple, list)) and not hasattr(output, "_fields"):
        loss = output[0] if output else None
        if not (isinstance(loss, Tensor) and loss.dim() == 0 and loss.is_floating_point()):
            loss = None
    else:
        loss = getattr(output, "loss", None)
    return loss if isinstance(loss, Tensor) else None


def _with_term(output: Any, term: Tensor) -> tuple[Any, bool]:
    """``output`` with ``term`` added to the loss it holds, and whether it held one.

    Mappings (incl. ``ModelOutput``) and objects with a settable ``loss`` are updated in
    place; frozen dataclasses, named tuples, tuples and lists are rebuilt.

    Raises:
        RXFError: the output holds a loss in a container rxf cannot update.
    """
    loss = _loss_of(output)
    if loss is None:
        return output, False
    total = loss + term
    if isinstance(output, MutableMapping):
        output["loss"] = total
    elif isinstance(output, tuple) and hasattr(output, "_replace"):
        output = output._replace(loss=total)
    elif isinstance(output, (tuple, list)):
        output = type(output)([total, *output[1:]])
    elif dataclasses.is_dataclass(output) and _frozen(output):
        output = dataclasses.replace(output, loss=total)  # type: ignore[type-var]
    else:
        try:
            output.loss = total
        except AttributeError as exc:
            raise RXFError(
                f"rxf cannot add the consistency term to the loss of a "
                f"{type(output).__name__}: its 'loss' cannot be set ({exc}). Return a dict, "
                f"a dataclass or a tuple, or compute the loss outside the model and add "
                f"model.consistency_loss to it."
            ) from exc
    return output, True


def _frozen(instance: Any) -> bool:
    params = getattr(type(instance), "__dataclass_params__", None)
    return bool(getattr(params, "frozen", False))


def _own_copies(values: Any) -> Any:
    """Shallow copies of mapping arguments, so each pass has its own (a forward that writes
    its outputs into its input mapping and returns it cannot overwrite the other pass's)."""
    if isinstance(values, dict) and type(values) is dict:
        return {k: copy.copy(v) if isinstance(v, MutableMapping) else v for k, v in values.items()}
    return tuple(copy.copy(v) if isinstance(v, MutableMapping) else v for v in values)


def _check_distinct(clean: Any, noisy: Any, model: str) -> None:
    if clean is noisy:
        raise RXFError(
            f"{model} returned the same object from the clean and the noisy pass, so the noisy "
            f"pass overwrote the clean output and the consistency term would be 0. Return a "
            f"new output object from forward (not one of its arguments, mutated)."
        )


def _has_reentrant_checkpoint(logits: Tensor) -> bool:
    """Whether ``logits``' graph holds a reentrant ``torch.utils.checkpoint`` segment."""
    seen: set[int] = set()
    stack = [logits.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ == "CheckpointFunctionBackward":
            return True
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return False


def _tied_aliases(module: nn.Module) -> dict[str, str]:
    """Second and later names of parameters registered under several names (tied weights,
    such as GPT-2's ``lm_head.weight``), each mapped to the parameter's first name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _drop_tied_aliases(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    # one copy of each shared tensor: safetensors refuses tensors that share memory (the
    # HF Trainer saves a non-PreTrainedModel that way); loading restores the alias
    for alias in _tied_aliases(module):
        state_dict.pop(prefix + alias, None)


def _complete_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Restores the tied aliases :func:`_drop_tied_aliases` left out."""
    for alias, source in _tied_aliases(module).items():
        if prefix + alias not in state_dict and prefix + source in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + source]


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
    targets = discover(model, cfg)
    probe_other_hooks(targets.embedding, targets.embedding_name)
    if targets.head is not None:
        targets.spectral_linears = apply_spectral_norm(targets.head, cfg.spectral_norm_scope)
        mark_r4f(targets.spectral_linears)
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
    return model.module
