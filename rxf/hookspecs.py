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

    Called once by :func:`rxf.wrap` when ``RXFConfig.embedding`` is not given. Stops at the
    first non-``None`` result; return ``None`` when the model is not one you recognise. For
    vision models return the patch embedding (ViT-style) or the stem (CNNs).
    """


@hookspec(firstresult=True)
def rxf_find_head(model: nn.Module) -> nn.Module | None:
    """Return the classification head that R4F puts under spectral normalization.

    Called once by :func:`rxf.wrap` when ``spectral_norm_head`` is set and ``RXFConfig.head``
    is not given. Stops at the first non-``None`` result. Raise :class:`rxf.RXFError` for a
    head R4F does not apply to (a generation head), ``None`` when you do not know the model.
    """


@hookspec(firstresult=True)
def rxf_extract_logits(model: nn.Module, output: Any) -> Tensor | None:
    """Return the logits inside whatever the model's forward returned.

    Called after every training forward, for the clean and the noisy output. Stops at the
    first non-``None`` result. The logits' last dimension is the class (or vocabulary)
    dimension; a last dimension of 1 is treated as a real-valued (regression) output.
    """


@hookspec(firstresult=True)
def rxf_token_mask(model: nn.Module, inputs: ForwardInputs, output: Any) -> Tensor | None:
    """Return a boolean ``(batch, positions)`` mask of the logits' positions that count.

    Called for token-level logits (``logits.dim() == 3``) before the divergence is reduced.
    ``inputs`` holds the forward's positional and keyword arguments. Stops at the first
    non-``None`` result; ``None`` everywhere means every position counts.
    """


@hookspec(firstresult=True)
def rxf_input_mask(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Return a boolean ``(batch, tokens)`` mask of the real (unpadded) input tokens.

    Called before the noisy pass, for noise types that scale with the real sequence
    length (NEFTune). Stops at the first non-``None`` result; ``None`` means no padding.
    """


@hookspec(firstresult=True)
def rxf_sequence_starts(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Return a boolean ``(batch, tokens)`` mask of the tokens where a sequence begins.

    Called before the noisy pass, for noise types that declare ``lengths``
    (:mod:`rxf.noise`): packed rows hold several examples, each with its own length. Stops
    at the first non-``None`` result; ``None`` means one sequence per row.
    """


@hookspec(firstresult=True)
def rxf_embedding_calls(model: nn.Module) -> str | None:
    """Return ``"all"`` or ``"first"``: which calls of the embedding module in one noisy
    pass get noise.

    Called once by :func:`rxf.wrap` when ``RXFConfig.embedding_calls`` is not given. Return
    ``"first"`` when the model calls one embedding module for its encoder and then for its
    decoder (only the encoder's input is perturbed); the built-in answer is ``"all"``.
    """


@hookspec(firstresult=True)
def rxf_prepare_concat_inputs(model: nn.Module, inputs: ForwardInputs) -> ForwardInputs | None:
    """Return the forward inputs to double in concat mode, completed where needed.

    Called once per concat-mode training forward, before the batch is doubled and the noisy
    half's ``labels`` are set to -100. A model that builds other inputs from its labels
    (seq2seq decoder inputs by teacher forcing) must get them from the **real** labels here,
    or the noisy half would read different inputs. Raise :class:`rxf.RXFError` for a model
    whose inputs cannot be completed; the built-in answer returns ``inputs`` unchanged.
    """


@hookspec
def rxf_register_noise_types() -> dict[str, NoiseSampler]:
    """Return noise samplers by name, for ``RXFConfig.noise_type``.

    Called whenever the registry is read; the dicts of all plugins are merged, and a name
    offered by two plugins is an error. See :class:`rxf.noise.NoiseSampler` for the call.
    """


@hookspec
def rxf_register_divergences() -> dict[str, Divergence]:
    """Return divergences by name, for ``RXFConfig.divergence``.

    Called whenever the registry is read; merged like :func:`rxf_register_noise_types`.
    A divergence maps clean and noisy logits to one value per position (the last, class,
    dimension reduced), in float32; see :class:`rxf.divergence.Divergence`.
    """
