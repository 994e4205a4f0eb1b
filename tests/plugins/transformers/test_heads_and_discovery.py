"""R4F heads, the refusal for generation heads, models the adapter does not know, and the
promise that importing the plugin does not import transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from rxf_transformers import hooks
from torch import nn
from torch.nn.utils import parametrize

import rxf

from .conftest import FAMILIES, make_batch, make_model, transformers

WITH_HEAD = sorted(name for name, family in FAMILIES.items() if family.head)
GENERATORS = ["gpt2", "llama", "t5", "bart"]


@pytest.mark.parametrize("name", WITH_HEAD)
def test_r4f_normalizes_the_final_linear_of_the_head(name: str) -> None:
    model = make_model(name)
    expected = model.get_submodule(FAMILIES[name].head)
    wrapped = rxf.wrap(model, eps=0.1, spectral_norm_head=True)
    assert wrapped.rxf_targets.spectral_linears == [expected]
    assert parametrize.is_parametrized(expected, "weight")
    wrapped(**make_batch(name))
    # the layer's effective weight has spectral norm 1 (power iteration: close to it)
    sigma = torch.linalg.matrix_norm(expected.weight.detach(), ord=2)
    assert abs(sigma.item() - 1.0) < 0.05


def test_r4f_scope_all_covers_every_linear_of_a_roberta_head() -> None:
    model = make_model("roberta")
    wrapped = rxf.wrap(model, spectral_norm_head=True, spectral_norm_scope="all")
    head = model.classifier
    assert wrapped.rxf_targets.spectral_linears == [head.dense, head.out_proj]


@pytest.mark.parametrize("name", GENERATORS)
def test_r4f_is_refused_for_generation_heads(name: str) -> None:
    model = make_model(name)
    with pytest.raises(rxf.RXFError, match=r"generation head.*RXFConfig\(head=") as info:
        rxf.wrap(model, spectral_norm_head=True)
    assert "'lm_head'" in str(info.value)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_r4f_is_refused_for_a_masked_lm_head() -> None:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    )
    with pytest.raises(rxf.RXFError, match="cls.predictions.decoder"):
        rxf.wrap(transformers.BertForMaskedLM(config), spectral_norm_head=True)


def test_an_explicit_head_path_overrides_the_refusal() -> None:
    model = make_model("llama")
    wrapped = rxf.wrap(model, spectral_norm_head=True, head="lm_head")
    assert wrapped.rxf_targets.spectral_linears == [model.lm_head]
    assert rxf.explain(wrapped).head_plugin == "config"


class TwoTables(nn.Module):
    """Not a transformers model, and nothing marks which table embeds the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Embedding(10, 4)
        self.b = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(x) + self.b(x)).mean(1)


class OddHF(TwoTables):
    """Looks like a PreTrainedModel, but its input embeddings are not exposed."""

    base_model_prefix = "odd"

    def __init__(self) -> None:
        super().__init__()
        self.config = type("OddConfig", (), {"model_type": "odd", "is_encoder_decoder": False})()

    def get_input_embeddings(self) -> nn.Module:
        raise NotImplementedError


@pytest.mark.parametrize("model_class", [TwoTables, OddHF])
def test_an_unrecognised_model_gets_a_clear_error(model_class: type[nn.Module]) -> None:
    model = model_class()
    assert hooks.rxf_find_embedding(model) is None
    with pytest.raises(rxf.RXFError, match=r"RXFConfig\(embedding="):
        rxf.wrap(model)
    wrapped = rxf.wrap(model, embedding="a", eps=1.0)  # the suggested fix works
    wrapped(torch.tensor([[1, 2, 3]]))
    assert wrapped.last_stats["divergence"] > 0


def test_other_models_fall_through_to_the_next_plugin() -> None:
    model = nn.Sequential()
    model.add_module("embed_tokens", nn.Embedding(10, 4))
    assert hooks.rxf_find_embedding(model) is None
    assert hooks.rxf_find_head(model) is None
    assert not hasattr(hooks, "rxf_extract_logits")  # rxf's defaults read output.logits
    ids = rxf.ForwardInputs((), {"labels": torch.zeros(1, 3, dtype=torch.long)})
    assert hooks.rxf_token_mask(model, ids, torch.zeros(1, 3, 5)) is None
    assert rxf.explain(model).embedding_plugin == "rxf.defaults"


def test_the_plugin_is_registered_and_imports_no_framework() -> None:
    import rxf_transformers

    assert rxf.plugin_manager().get_plugin("transformers") is rxf_transformers
    code = "import sys, rxf_transformers; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_docs_table_lists_every_tested_family() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "transformers.md").read_text()
    for family in FAMILIES.values():
        row = f"| `{family.model_class}` | `{family.embedding}` | `{family.first_norm}`"
        assert row in text, family.model_class
