"""Other forward hooks on the embedding: rxf's noise must be the only perturbation.

Another hook that changes the embedding output (a Hugging Face Trainer's NEFTune hook, for
one) would make the "clean" pass noisy and give the noisy pass two noises. These checks find
such a hook at :func:`rxf.wrap` (:func:`probe_other_hooks`) and at every training forward
(:func:`watch_other_hooks`), and name it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rxf.errors import RXFError
from rxf.perturbation import split_embedding_output


@contextmanager
def watch_other_hooks(module: nn.Module, name: str) -> Iterator[None]:
    """Raise :class:`RXFError` when another forward hook on ``module`` changes its output.

    rxf's noise must be the only perturbation of the embedding: another one (e.g. a
    Trainer's NEFTune hook) would make the "clean" pass noisy and give the noisy pass two
    noises. A first-running observer keeps the raw output; the check runs in a last-running
    observer and costs an identity test, plus a comparison only when a hook returned a new
    tensor.
    """
    seen: list[Any] = []

    def first(mod: nn.Module, args: Any, output: Any) -> None:
        seen.append(output)

    def last(mod: nn.Module, args: Any, output: Any) -> None:
        raw = seen.pop() if seen else output
        if output is raw:
            return
        try:
            before, _ = split_embedding_output(mod, raw)
            after, _ = split_embedding_output(mod, output)
            same = before.shape == after.shape and torch.equal(before, after)
        except TypeError:
            same = False
        if not same:
            raise RXFError(other_hook_message(mod, name, [first, last]))

    handles = [
        module.register_forward_hook(first, prepend=True),
        module.register_forward_hook(last),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def other_hook_message(module: nn.Module, name: str, own: list[Any]) -> str:
    """The error for a foreign hook that changes the embedding output, naming the hooks."""
    names = [
        getattr(h, "__qualname__", type(h).__name__)
        for h in module._forward_hooks.values()
        if h not in own
    ]
    return (
        f"another forward hook on the embedding module {name!r} changes its output "
        f"({', '.join(names) or 'unnamed'}): under rxf the clean pass would be perturbed and "
        f"the noisy pass would get two noises. Remove that hook (a Hugging Face Trainer's "
        f"NEFTune: leave the NEFTune alpha of its TrainingArguments unset); for NEFTune noise "
        f"through rxf, wrap with the NEFTune noise type, eps=alpha and r3f_lambda=0 "
        f"(docs/transformers.md, 'NEFTune: noise only')."
    )


def probe_other_hooks(module: nn.Module, name: str) -> None:
    """At wrap time: run an ``nn.Embedding`` that already carries forward hooks once, on one
    token in training mode (RNG state restored), and refuse if a hook changes its output."""
    if not module._forward_hooks or not isinstance(module, nn.Embedding):
        return
    ids = torch.zeros((1, 1), dtype=torch.long, device=module.weight.device)
    training = module.training
    devices = [module.weight.device] if module.weight.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            module.train()
            with watch_other_hooks(module, name):
                module(ids)
    finally:
        module.train(training)
