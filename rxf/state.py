"""The wrapper's state dict: the inner model's keys, each tied parameter stored once.

``safetensors`` refuses tensors that share memory, and the Hugging Face Trainer saves a model
that is not a ``PreTrainedModel`` that way; :func:`drop_tied_aliases` keeps one copy of each
tied parameter (under its first name, as ``save_pretrained`` does) and
:func:`complete_keys` restores the others when loading.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def tied_aliases(module: nn.Module) -> dict[str, str]:
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


def drop_tied_aliases(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict hook: drop the second and later names of tied parameters (one copy each)."""
    # one copy of each shared tensor: safetensors refuses tensors that share memory (the
    # HF Trainer saves a non-PreTrainedModel that way); loading restores the alias
    for alias in tied_aliases(module):
        state_dict.pop(prefix + alias, None)


def complete_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Restores the tied aliases :func:`drop_tied_aliases` left out."""
    for alias, source in tied_aliases(module).items():
        if prefix + alias not in state_dict and prefix + source in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + source]
