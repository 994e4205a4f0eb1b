"""The plugin contract: every hook rxf calls, with what it receives and what ``None`` means.

Hook implementations may accept any subset of a hook's arguments (pluggy passes them by
name), so hooks can grow new arguments without breaking existing plugins. Mark them with
:data:`hookimpl`::

    from rxf import hookimpl

    class MyPlugin:
        @hookimpl
        def rxf_find_embedding(self, model):
            return getattr(model, "tok_emb", None)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import Tensor, nn

    from rxf.divergence import Divergence
    from rxf.inputs import ForwardInputs
    from rxf.noise import NoiseSampler

PROJECT = "rxf"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def rxf_find_embedding(model: nn.Module) -> nn.Module | None:
    """Return the module whose output receives the noise: the token-embedding lookup.

    Called once by :func:`rxf.wrap` when ``RXFConfig.embedding`` is not given. Return
    ``None`` when the model is not one you recognise. For vision models return the patch
    embedding (ViT-style) or the stem (CNNs). The default takes ``get_input_embeddings()``,
    else the one module under a usual embedding name, else the model's only ``nn.Embedding``.

    Args:
        model: the model being wrapped.
    """


@hookspec(firstresult=True)
def rxf_find_head(model: nn.Module) -> nn.Module | None:
    """Return the classification head that R4F puts under spectral normalization.

    Called once by :func:`rxf.wrap` when ``spectral_norm_head`` is set and ``RXFConfig.head``
    is not given. Raise :class:`rxf.RXFError` for a head R4F does not apply to (a generation
    head), return ``None`` when you do not know the model. The default takes
    ``get_classifier()``, else a child named like a classification head.

    Args:
        model: the model being wrapped.
    """


@hookspec(firstresult=True)
def rxf_extract_logits(model: nn.Module, output: Any) -> Tensor | None:
    """Return the logits inside whatever the model's forward returned.

    Called after every training forward, for the clean and the noisy output. The logits'
    last dimension is the class (or vocabulary) dimension; a last dimension of 1 is treated
    as a real-valued (regression) output and gets ``regression_divergence``. The default
    reads a tensor, ``.logits`` / ``["logits"]``, or the first non-scalar floating tensor of
    a tuple.

    Args:
        model: the inner (wrapped) model.
        output: its forward's return value: a tensor, tuple, dataclass, dict, ...
    """


@hookspec(firstresult=True)
def rxf_token_mask(
    model: nn.Module, inputs: ForwardInputs, output: Any, logits: Tensor
) -> Tensor | None:
    """Return a boolean ``(batch, positions)`` mask of the logits' positions that count.

    Called for token-level logits (``logits.dim() == 3``) before the divergence is reduced.
    ``None`` everywhere means every position counts. The default uses ``labels != -100``
    when the labels have the logits' shape, else the ``attention_mask``; an adapter for
    causal LMs must shift the labels by one.

    Args:
        model: the inner model.
        inputs: the forward's positional and keyword arguments.
        output: the clean pass's return value.
        logits: the clean pass's ``(batch, positions, classes)`` logits, as
            ``rxf_extract_logits`` found them.
    """


@hookspec(firstresult=True)
def rxf_input_mask(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Return a boolean ``(batch, tokens)`` mask of the real (unpadded) input tokens.

    Called before the noisy pass, only for noise types that declare ``mask`` or ``lengths``
    (:mod:`rxf.noise`). ``None`` means no padding. The default reads a 2-D
    ``attention_mask`` keyword.

    Args:
        model: the inner model.
        inputs: the forward's positional and keyword arguments.
    """


@hookspec(firstresult=True)
def rxf_sequence_starts(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Return a boolean ``(batch, tokens)`` mask of the tokens where a sequence begins.

    Called before the noisy pass, only for noise types that declare ``lengths``
    (:mod:`rxf.noise`): a packed row (several examples in one row, as Hugging Face's
    ``DataCollatorWithFlattening`` makes) holds several sequences, each with its own length.
    ``None`` means one sequence per row. The default reads ``position_ids`` restarting at 0;
    the transformers adapter also reads ``cu_seq_lens_q``.

    Args:
        model: the inner model.
        inputs: the forward's positional and keyword arguments.
    """


@hookspec(firstresult=True)
def rxf_embedding_calls(model: nn.Module) -> str | None:
    """Return ``"all"`` or ``"first"``: which calls of the embedding module in one noisy
    pass get noise.

    Called once by :func:`rxf.wrap` when ``RXFConfig.embedding_calls`` is not given. The
    default is ``"all"`` (a bi-encoder embedding two texts with one table gets noise on
    both); return ``"first"`` when the model calls one embedding module for its encoder and
    then for its decoder, so that only the source is perturbed, as in the reference.
    ``last_stats["perturbed_calls"]`` shows what happened.

    Args:
        model: the model being wrapped.
    """


@hookspec(firstresult=True)
def rxf_prepare_concat_inputs(model: nn.Module, inputs: ForwardInputs) -> ForwardInputs | None:
    """Return the forward inputs to double in concat mode, completed where needed.

    Called once per concat-mode training forward, before the batch is doubled and the noisy
    half's ``labels`` are set to -100. A model that builds other inputs from its labels
    (seq2seq decoder inputs by teacher forcing) must get them from the **real** labels here,
    or the noisy half would read different inputs. Raise :class:`rxf.RXFError` for a model
    whose inputs cannot be completed. The default returns ``inputs`` unchanged; the
    transformers adapter builds ``decoder_input_ids`` with
    ``prepare_decoder_input_ids_from_labels``.

    Args:
        model: the inner model.
        inputs: the forward's positional and keyword arguments.
    """


@hookspec
def rxf_register_wrapper_methods() -> dict[str, Callable[..., Any]]:
    """Return methods the wrapper offers by name, ahead of the inner model's attributes.

    Called once per process (merged like :func:`rxf_register_noise_types`). A method is
    called as ``method(wrapper, *args, **kwargs)`` when code reads that attribute of an
    :class:`rxf.RXFModel`; names the wrapper itself defines win. The transformers adapter
    registers ``save_pretrained``, which saves the inner model with R4F's normalized weights
    baked in.
    """


@hookspec
def rxf_register_noise_types() -> dict[str, NoiseSampler]:
    """Return noise samplers by name, for ``RXFConfig.noise_type``.

    Called whenever the registry is read; the dicts of all plugins are merged, and a name
    offered by two plugins is an error naming both. A sampler is called as
    ``sampler(embeddings, eps, **extras)`` and returns float32 noise of the embeddings'
    shape on their device, drawn with torch's RNG. It **declares** the extras it needs by
    naming them as parameters, and rxf computes only those: ``mask`` (the ``(batch,
    tokens)`` real-token mask) and ``lengths`` (``(batch, tokens)`` float32: for each token
    the real length of the example it belongs to, per example also in packed rows). Each
    extra defaults to ``None`` (given only when it fits the embedding output).
    """


@hookspec
def rxf_register_divergences() -> dict[str, Divergence]:
    """Return divergences by name, for ``RXFConfig.divergence`` / ``regression_divergence``.

    Called whenever the registry is read; merged like :func:`rxf_register_noise_types`. A
    divergence is called as ``divergence(clean_logits, noisy_logits)`` and returns one
    float32 value per position (the last, class, dimension reduced); rxf averages them over
    examples or masked tokens (:func:`rxf.divergence.reduce_positions`).
    """
