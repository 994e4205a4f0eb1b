"""The "never silent" contract (issue 9, acceptance 2), over every family the adapters support.

For each family (every Hugging Face family of the adapter's test table, BART/mBART/T5 also with
one embedding module shared by encoder and decoder; fairseq-style RoBERTa classifier and
BART seq2seq sharing one table; timm ViT and ResNet; generic models returning a dict, a
named tuple, a frozen dataclass, a plain tuple, and a bi-encoder calling its embedding twice):

1. noise arrives on every embedding call that should get it (``perturbed_calls``), the first
   norm's input differs between the passes while a decoder fed by an unperturbed call stays
   clean, ``eps > 0`` gives a positive term and ``eps = 0`` a zero one;
2. the term reaches the returned loss, whatever the container (``ModelOutput``,
   ``return_dict=False`` tuples, named tuple, frozen dataclass, plain tuple); a model that
   returns no loss leaves it in ``consistency_loss`` (0-dim, with graph);
3. after a training step, ``deepcopy``, ``AveragedModel``, pickling and ``state_dict`` work, no
   graph is kept, and the copies train;
4. where the family supports gradient checkpointing, one R3F step gives the loss and every
   parameter's gradient of the unchecked step, reentrant and not.

Families without checkpointing support: HF ALBERT, MPNet, ResNet (``supports_gradient_
checkpointing`` is False); the fairseq-shaped test models (no activation checkpointing).
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

import rxf
from rxf.errors import RXFError
from tests.integration.conftest import grads
from tests.plugins.fairseq import models as fairseq_models
from tests.plugins.transformers.conftest import FAMILIES as HF_FAMILIES
from tests.plugins.transformers.conftest import InputCapture, make_batch, make_model

timm = pytest.importorskip("timm")
from tests.plugins.timm.test_adapter import FAMILIES as TIMM_FAMILIES  # noqa: E402

EPS = 0.5  # large: with dropout off the two passes differ by the noise only
LAMBDA = 1.0

# ----------------------------------------------------------------------------- generic models

GENERIC_VOCAB, GENERIC_DIM, GENERIC_CLASSES = 20, 8, 3


class LossLogits(NamedTuple):
    loss: Tensor
    logits: Tensor


@dataclass(frozen=True)
class FrozenOutput:
    loss: Tensor
    logits: Tensor


class GenericClassifier(nn.Module):
    """Token lookup, LayerNorm, mean pool, Linear; returns its loss in ``container``."""

    def __init__(self, container: str) -> None:
        super().__init__()
        self.container = container
        self.embed = nn.Embedding(GENERIC_VOCAB, GENERIC_DIM)
        self.norm = nn.LayerNorm(GENERIC_DIM)
        self.head = nn.Linear(GENERIC_DIM, GENERIC_CLASSES)

    def forward(self, input_ids: Tensor, labels: Tensor) -> Any:
        logits = self.head(self.norm(self.embed(input_ids)).mean(1))
        loss = F.cross_entropy(logits, labels)
        if self.container == "dict":
            return {"loss": loss, "logits": logits}
        if self.container == "named_tuple":
            return LossLogits(loss, logits)
        if self.container == "frozen_dataclass":
            return FrozenOutput(loss, logits)
        return (loss, logits)  # plain tuple


class BiEncoder(nn.Module):
    """A siamese classifier: one table embeds both texts (two calls per forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(GENERIC_VOCAB, GENERIC_DIM)
        self.norm = nn.LayerNorm(GENERIC_DIM)
        self.head = nn.Linear(2 * GENERIC_DIM, GENERIC_CLASSES)

    def forward(self, first_ids: Tensor, second_ids: Tensor, labels: Tensor) -> dict[str, Tensor]:
        a = self.norm(self.embed(first_ids)).mean(1)
        b = self.norm(self.embed(second_ids)).mean(1)
        logits = self.head(torch.cat([a, b], -1))
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def _generic_ids(seed: int, batch: int = 3, length: int = 5) -> Tensor:
    return torch.randint(
        0, GENERIC_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def _generic(container: str) -> Callable[[], tuple[nn.Module, dict[str, Any]]]:
    def build() -> tuple[nn.Module, dict[str, Any]]:
        torch.manual_seed(0)
        return GenericClassifier(container).train(), {
            "input_ids": _generic_ids(1),
            "labels": torch.tensor([0, 2, 1]),
        }

    return build


def _bi_encoder() -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    return BiEncoder().train(), {
        "first_ids": _generic_ids(1),
        "second_ids": _generic_ids(2),
        "labels": torch.tensor([0, 2, 1]),
    }


# ----------------------------------------------------------------------------- the case table


@dataclass(frozen=True)
class Case:
    """One family: how to build it, what rxf must perturb and where the loss is."""

    build: Callable[[], tuple[nn.Module, dict[str, Any]]]
    embedding_calls: int  # calls of the embedding module in the noisy pass
    perturbed_calls: int  # calls that must get noise
    noisy: tuple[str, ...]  # modules whose input must differ between the passes
    clean: tuple[str, ...] = ()  # modules whose input must be the same in both passes
    loss: str = "returned"  # "returned": the output holds the loss; "none": it does not
    task: Callable[[Any, dict[str, Any]], Tensor] | None = None  # task loss when "none"
    tuple_kwargs: dict[str, Any] | None = None  # the same model returning a tuple
    checkpointing: Callable[[nn.Module, bool], None] | None = None
    every_call: tuple[str, ...] = ()  # modules that get noise with embedding_calls="all"
    probe_calls: int = 1  # calls of each ``noisy`` module per pass
    r4f: bool = False  # the adapter finds a classification head (R4F applies)


def _hf_checkpointing(model: Any, reentrant: bool) -> None:
    assert model.supports_gradient_checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": reentrant}
        )
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _hf(name: str, shared: bool = False) -> Case:
    family = HF_FAMILIES[name]

    def build() -> tuple[nn.Module, dict[str, Any]]:
        model: Any = make_model(name)
        if shared:  # one embedding module called by the encoder and by the decoder
            model.set_input_embeddings(model.get_input_embeddings())
            assert model.get_encoder().embed_tokens is model.get_decoder().embed_tokens
        return model, make_batch(name, batch=3, length=6, target=4)

    checkpointing = None if name in ("albert", "mpnet", "resnet") else _hf_checkpointing
    return Case(
        build,
        embedding_calls=2 if shared else 1,
        perturbed_calls=1,
        noisy=(family.first_norm,),
        clean=(family.decoder_norm,) if family.decoder_norm else (),
        tuple_kwargs={"return_dict": False},
        checkpointing=checkpointing,
        every_call=(family.decoder_norm,) if shared and family.decoder_norm else (),
        r4f=family.head is not None,
    )


def _fairseq_classifier() -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    model = fairseq_models.RobertaModel()
    model.register_classification_head("head", 3)
    sample = fairseq_models.classification_sample([0, 1, 2])
    return model.train(), {
        **sample["net_input"],
        "classification_head_name": "head",
        "_target": sample["target"],
    }


def _fairseq_seq2seq() -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    model = fairseq_models.BARTModel(share=True)
    assert model.encoder.embed_tokens is model.decoder.embed_tokens
    sample = fairseq_models.seq2seq_sample()
    return model.train(), {**sample["net_input"], "_target": sample["target"]}


def _fairseq_task(output: Any, inputs: dict[str, Any]) -> Tensor:
    logits, target = output[0], inputs["_target"]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        target.reshape(-1),
        ignore_index=fairseq_models.PAD,
    )


def _timm(name: str) -> Callable[[], tuple[nn.Module, dict[str, Any]]]:
    def build() -> tuple[nn.Module, dict[str, Any]]:
        torch.manual_seed(0)
        model_name, kwargs, _, _ = TIMM_FAMILIES[name]
        model = timm.create_model(
            model_name,
            pretrained=False,
            num_classes=5,
            drop_rate=0.0,
            drop_path_rate=0.0,
            **kwargs,
        )
        g = torch.Generator().manual_seed(5)
        return model.train(), {
            "x": torch.randn(2, 3, 32, 32, generator=g),
            "_target": torch.tensor([1, 4]),
        }

    return build


def _timm_task(output: Any, inputs: dict[str, Any]) -> Tensor:
    return F.cross_entropy(output.float(), inputs["_target"])


@contextmanager
def _timm_reentrant(reentrant: bool) -> Iterator[None]:
    before = timm.layers.use_reentrant_ckpt()
    timm.layers.set_reentrant_ckpt(reentrant)
    try:
        yield
    finally:
        timm.layers.set_reentrant_ckpt(before)


def _timm_checkpointing(model: Any, reentrant: bool) -> None:
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing


CASES: dict[str, Case] = {
    **{f"hf-{name}": _hf(name) for name in HF_FAMILIES},
    **{f"hf-{name}-shared": _hf(name, shared=True) for name in ("bart", "mbart", "t5")},
    "fairseq-roberta-classifier": Case(
        _fairseq_classifier,
        embedding_calls=1,
        perturbed_calls=1,
        noisy=("encoder.sentence_encoder.layernorm_embedding",),
        loss="none",
        task=_fairseq_task,
        r4f=True,
    ),
    "fairseq-bart-seq2seq-shared": Case(
        _fairseq_seq2seq,
        embedding_calls=2,
        perturbed_calls=1,
        noisy=("encoder.layernorm_embedding",),
        clean=("decoder.layernorm_embedding",),
        loss="none",
        task=_fairseq_task,
        every_call=("decoder.layernorm_embedding",),
    ),
    "timm-vit": Case(
        _timm("vit"),
        embedding_calls=1,
        perturbed_calls=1,
        noisy=("blocks.0.norm1",),
        loss="none",
        task=_timm_task,
        checkpointing=_timm_checkpointing,
        r4f=True,
    ),
    "timm-resnet": Case(
        _timm("resnet"),
        embedding_calls=1,
        perturbed_calls=1,
        noisy=("bn1",),
        loss="none",
        task=_timm_task,
        checkpointing=_timm_checkpointing,
        r4f=True,
    ),
    "generic-dict": Case(_generic("dict"), 1, 1, noisy=("norm",)),
    "generic-named-tuple": Case(_generic("named_tuple"), 1, 1, noisy=("norm",)),
    "generic-frozen-dataclass": Case(_generic("frozen_dataclass"), 1, 1, noisy=("norm",)),
    "generic-tuple": Case(_generic("tuple"), 1, 1, noisy=("norm",)),
    "generic-bi-encoder": Case(_bi_encoder, 2, 2, noisy=("norm",), probe_calls=2),
}
CHECKPOINTED = [name for name, case in CASES.items() if case.checkpointing is not None]
TUPLE_CASES = [name for name, case in CASES.items() if case.tuple_kwargs is not None]
SHARED = [name for name, case in CASES.items() if case.every_call]
R4F = [name for name, case in CASES.items() if case.r4f]


# ----------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_thread")


def _split(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The forward's keyword arguments, and the test-only ones (``_target``)."""
    forward = {k: v for k, v in inputs.items() if not k.startswith("_")}
    return forward, inputs


def _returned_loss(output: Any) -> Tensor:
    if isinstance(output, dict) or hasattr(output, "loss"):
        return output["loss"] if isinstance(output, dict) else output.loss
    assert isinstance(output, tuple), type(output)
    return output[0]


def _logits_of(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "logits"):
        return output["logits"] if isinstance(output, dict) else output.logits
    return next(t for t in output if isinstance(t, Tensor) and t.dim() > 0)


def _step_loss(case: Case, model: Any, inputs: dict[str, Any]) -> Tensor:
    """The loss a user backpropagates: the returned one, or the task loss + the term."""
    forward, _ = _split(inputs)
    output = model(**forward)
    if case.loss == "returned":
        return _returned_loss(output)
    assert case.task is not None
    return case.task(output, inputs) + model.consistency_loss


def _assert_no_graph(wrapped: nn.Module) -> None:
    term = wrapped.consistency_loss
    assert term.grad_fn is None and not term.requires_grad


# ----------------------------------------------------------------------------- 1. noise arrives


@pytest.mark.parametrize("case_name", list(CASES))
def test_noise_arrives_on_every_call_that_should_get_it(case_name: str) -> None:
    case = CASES[case_name]
    model, inputs = case.build()
    forward, _ = _split(inputs)
    capture = InputCapture(model, *case.noisy, *case.clean)
    wrapped = rxf.wrap(model, eps=EPS, r3f_lambda=LAMBDA)
    torch.manual_seed(0)
    wrapped(**forward)
    capture.remove()
    calls = case.probe_calls
    for path in case.noisy:  # clean pass's inputs first, then the noisy pass's
        seen = capture.inputs[path]
        assert len(seen) == 2 * calls, (path, len(seen))
        for clean, noisy in zip(seen[:calls], seen[calls:], strict=True):
            assert not torch.allclose(clean, noisy), f"no noise reached {path}"
    for path in case.clean:  # fed by a call that must stay unperturbed
        seen = capture.inputs[path]
        assert len(seen) == 2 and torch.equal(seen[0], seen[1]), f"noise reached {path}"
    stats = wrapped.last_stats
    assert stats["divergence"] > 1e-6, stats
    assert stats["consistency_loss"] == pytest.approx(LAMBDA * stats["divergence"], rel=1e-6)
    assert stats["embedding_calls"] == case.embedding_calls, stats
    assert stats["perturbed_calls"] == case.perturbed_calls, stats

    silent = rxf.wrap(rxf.unwrap(wrapped), eps=0.0, r3f_lambda=LAMBDA)
    torch.manual_seed(0)
    silent(**forward)
    assert silent.last_stats["divergence"] == 0.0
    assert silent.consistency_loss.item() == 0.0
    assert silent.last_stats["perturbed_calls"] == case.perturbed_calls


@pytest.mark.parametrize("case_name", SHARED)
def test_every_call_is_perturbed_when_configured(case_name: str) -> None:
    """``embedding_calls="all"`` overrides the adapter's "first" for a shared table: the
    decoder's lookup gets noise too."""
    case = CASES[case_name]
    model, inputs = case.build()
    forward, _ = _split(inputs)
    capture = InputCapture(model, *case.every_call)
    wrapped = rxf.wrap(model, eps=EPS, embedding_calls="all")
    torch.manual_seed(0)
    wrapped(**forward)
    capture.remove()
    assert wrapped.last_stats["embedding_calls"] == case.embedding_calls
    assert wrapped.last_stats["perturbed_calls"] == case.embedding_calls
    for path in case.every_call:
        seen = capture.inputs[path]
        assert len(seen) == 2 and not torch.allclose(seen[0], seen[1]), path


# ----------------------------------------------------------------------------- 2. the loss


@pytest.mark.parametrize("case_name", list(CASES))
def test_the_term_reaches_the_returned_loss(case_name: str) -> None:
    case = CASES[case_name]
    model, inputs = case.build()
    forward, _ = _split(inputs)
    with torch.no_grad():
        plain = model(**forward)  # dropout is off: the clean pass's output
    task = _returned_loss(plain) if case.loss == "returned" else case.task(plain, inputs)  # type: ignore[misc]
    wrapped = rxf.wrap(model, eps=EPS, r3f_lambda=LAMBDA)
    torch.manual_seed(0)
    output = wrapped(**forward)
    term = wrapped.consistency_loss
    assert term.dim() == 0 and term.grad_fn is not None
    assert term.item() > 1e-6
    assert term.item() == pytest.approx(LAMBDA * wrapped.last_stats["divergence"], rel=1e-6)
    assert type(output) is type(plain)
    torch.testing.assert_close(_logits_of(output), _logits_of(plain))  # the clean pass's
    if case.loss == "returned":
        loss = _returned_loss(output)
        assert loss.grad_fn is not None
        torch.testing.assert_close(loss.detach(), (task + term).detach(), rtol=1e-6, atol=1e-7)
    else:  # no loss returned: the term waits in consistency_loss to be added
        assert case.task is not None
        loss = case.task(output, inputs) + term
        torch.testing.assert_close(loss.detach(), (task + term).detach(), rtol=1e-6, atol=1e-7)
    loss.backward()


@pytest.mark.parametrize("case_name", TUPLE_CASES)
def test_the_term_reaches_a_tuple_loss(case_name: str) -> None:
    """``return_dict=False``: the loss is the tuple's first element; the term is added to it,
    and it is the term of the same step returned as a dict."""
    case = CASES[case_name]
    assert case.tuple_kwargs is not None
    model, inputs = case.build()
    forward, _ = _split(inputs)
    with torch.no_grad():
        task = model(**forward, **case.tuple_kwargs)[0]
    wrapped = rxf.wrap(model, eps=EPS, r3f_lambda=LAMBDA)
    torch.manual_seed(0)
    wrapped(**forward)
    dict_term = wrapped.consistency_loss.detach()
    torch.manual_seed(0)
    output = wrapped(**forward, **case.tuple_kwargs)
    assert isinstance(output, tuple) and not hasattr(output, "_fields")
    term = wrapped.consistency_loss
    assert term.item() > 1e-6
    torch.testing.assert_close(term.detach(), dict_term, rtol=1e-5, atol=1e-7)
    loss = output[0]
    assert loss.dim() == 0 and loss.grad_fn is not None
    torch.testing.assert_close(loss.detach(), (task + term).detach(), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- 3. copies


@pytest.mark.parametrize("case_name", list(CASES))
def test_copies_after_a_training_step(case_name: str) -> None:
    case = CASES[case_name]
    model, inputs = case.build()
    wrapped = rxf.wrap(model, eps=0.1)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=1e-3)
    torch.manual_seed(0)
    loss = _step_loss(case, wrapped, inputs)
    mid_step = copy.deepcopy(wrapped)  # between forward and backward: no graph copied
    _assert_no_graph(mid_step)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    _assert_no_graph(wrapped)  # the backward released the step's graph

    clone = copy.deepcopy(wrapped)
    average = AveragedModel(wrapped)
    average.update_parameters(wrapped)
    restored = pickle.loads(pickle.dumps(wrapped))
    state = wrapped.state_dict()
    assert state and all(not v.requires_grad for v in state.values())
    assert set(clone.state_dict()) == set(state)

    for copied in (clone, average.module, restored, mid_step):
        assert isinstance(copied, rxf.RXFModel)
        torch.manual_seed(1)
        loss = _step_loss(case, copied, inputs)
        assert torch.isfinite(loss) and copied.consistency_loss.item() > 0
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in copied.parameters())
        _assert_no_graph(copied)
    assert all(p.grad is None for p in wrapped.parameters())  # the copies share nothing


@pytest.mark.parametrize("case_name", R4F)
def test_r4f_copies_after_a_training_step(case_name: str) -> None:
    """R4F (spectral norm on the head): deepcopy and AveragedModel after a step work and the
    copies train; pickling the whole model is refused with an RXFError naming the fix."""
    case = CASES[case_name]
    model, inputs = case.build()
    wrapped = rxf.wrap(model, eps=0.1, spectral_norm_head=True)
    assert wrapped.rxf_targets.spectral_linears
    torch.manual_seed(0)
    _step_loss(case, wrapped, inputs).backward()
    _assert_no_graph(wrapped)
    clone = copy.deepcopy(wrapped)
    average = AveragedModel(wrapped)
    average.update_parameters(wrapped)
    with pytest.raises(RXFError, match="state_dict"):
        pickle.dumps(wrapped)
    copies: tuple[Any, ...] = (clone, average.module)
    for copied in copies:
        torch.manual_seed(1)
        loss = _step_loss(case, copied, inputs)
        assert torch.isfinite(loss) and copied.consistency_loss.item() > 0
        loss.backward()
        _assert_no_graph(copied)


# ----------------------------------------------------------------------------- 4. checkpointing


def _r3f_step(case: Case, model: nn.Module, inputs: dict[str, Any]) -> tuple[Tensor, dict, int]:
    """One R3F step; the loss, every parameter's gradient, and how many module forwards
    ran during the backward (activation checkpointing recomputes them)."""
    wrapped = rxf.wrap(model, eps=0.1, r3f_lambda=LAMBDA)
    calls: list[int] = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: calls.append(1))
    try:
        torch.manual_seed(3)
        loss = _step_loss(case, wrapped, inputs)
        assert wrapped.consistency_loss.item() > 0
        before = len(calls)
        loss.backward()
    finally:
        handle.remove()
    return loss.detach(), grads(model), len(calls) - before


_UNCHECKED: dict[str, tuple[Tensor, dict]] = {}


def _unchecked_step(case_name: str) -> tuple[Tensor, dict]:
    """The reference step without checkpointing, once per case."""
    if case_name not in _UNCHECKED:
        case = CASES[case_name]
        model, inputs = case.build()
        loss, gradients, recomputed = _r3f_step(case, model, inputs)
        assert recomputed == 0
        _UNCHECKED[case_name] = (loss, gradients)
    return _UNCHECKED[case_name]


BATCHNORM_IN_SEGMENTS = {"timm-resnet"}  # refused: see test_checkpointed_batchnorm_*


def _checkpoint_params(case_name: str, reentrant: bool) -> Any:
    return pytest.param(
        case_name,
        reentrant,
        id=f"{case_name}-" + ("reentrant" if reentrant else "non-reentrant"),
    )


@pytest.mark.parametrize(
    ("case_name", "reentrant"),
    [
        _checkpoint_params(name, r)
        for name in CHECKPOINTED
        if name not in BATCHNORM_IN_SEGMENTS
        for r in (False, True)
    ],
)
def test_checkpointed_gradients_equal_unchecked(case_name: str, reentrant: bool) -> None:
    case = CASES[case_name]
    ref_loss, ref_grads = _unchecked_step(case_name)
    model, inputs = case.build()
    assert case.checkpointing is not None
    case.checkpointing(model, reentrant)
    with _timm_reentrant(reentrant), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "None of the inputs ..."
        loss, ckpt_grads, recomputed = _r3f_step(case, model, inputs)
    assert recomputed > 0, "checkpointing is not active: nothing was recomputed"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert set(ckpt_grads) == set(ref_grads)
    for name, grad in ckpt_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def _is_batchnorm_statistic(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointed_batchnorm_in_training_mode_is_refused(reentrant: bool) -> None:
    """BatchNorm in training mode inside checkpointed segments: the noisy pass's
    recomputation in the backward would fold the noisy batch into the running statistics
    (reentrant: num_batches_tracked 3 instead of 2) or fail with CheckpointError
    (non-reentrant). rxf refuses it at the noisy pass, naming the fixes."""
    case = CASES["timm-resnet"]
    model, inputs = case.build()
    assert case.checkpointing is not None
    case.checkpointing(model, reentrant)
    with (
        _timm_reentrant(reentrant),
        warnings.catch_warnings(),
        pytest.raises(rxf.RXFError, match=r"checkpointed segment.*Freeze the BatchNorm"),
    ):
        warnings.simplefilter("ignore", UserWarning)
        _step_loss(case, rxf.wrap(model, eps=0.1), inputs)


def test_checkpointed_noisy_pass_leaves_batchnorm_statistics_alone() -> None:
    """timm ResNet, reentrant checkpointing, with the fix the refusal names (BatchNorm
    frozen): the step runs and the running statistics after it are those of the same
    checkpointed step without rxf."""
    case = CASES["timm-resnet"]
    statistics = []
    for use_rxf in (False, True):
        model, inputs = case.build()
        assert case.checkpointing is not None
        case.checkpointing(model, True)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        with _timm_reentrant(True), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if use_rxf:
                loss = _step_loss(case, rxf.wrap(model, eps=0.1), inputs)
            else:
                loss = case.task(model(**_split(inputs)[0]), inputs)  # type: ignore[misc]
            loss.backward()
        statistics.append(
            {k: v.clone() for k, v in model.state_dict().items() if _is_batchnorm_statistic(k)}
        )
    assert statistics[0] and set(statistics[0]) == set(statistics[1])
    for key, value in statistics[0].items():
        torch.testing.assert_close(statistics[1][key], value, msg=key)
