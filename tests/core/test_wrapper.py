"""wrap / RXFModel / unwrap: passes, the consistency term, gradients, state and errors."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import rxf
from rxf.errors import RXFError

from .conftest import TinyClassifier, TinyTagger


def two_direction_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    return ((p - q) * (p.log() - q.log())).sum(-1).mean()


def count_calls(module: nn.Module) -> list[object]:
    outputs: list[object] = []
    module.register_forward_hook(lambda m, a, out: outputs.append(out))
    return outputs


def test_term_equals_lambda_times_symmetric_kl_of_both_passes(tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=0.5, r3f_lambda=0.7)
    outputs = count_calls(tiny)
    out = model(**batch)
    clean, noisy = outputs[0]["logits"], outputs[1]["logits"]
    assert out is outputs[0]  # the clean pass's output is returned
    expected = 0.7 * two_direction_kl(clean, noisy)
    assert torch.allclose(model.consistency_loss.double(), expected, atol=1e-6)
    task = nn.functional.cross_entropy(clean, batch["labels"])
    assert torch.allclose(out["loss"], task + model.consistency_loss)
    stats = model.last_stats
    assert stats["mode"] == "two_pass" and stats["divergence"] == pytest.approx(
        expected.item() / 0.7
    )


def test_noise_reaches_the_model(tiny, batch) -> None:
    noisy = rxf.wrap(tiny, eps=1.0)
    noisy(**batch)
    assert noisy.consistency_loss > 1e-5
    for off in ({"eps": 0.0}, {"eps": 0.0, "noise_type": "normal"}):
        silent = rxf.wrap(rxf.unwrap(noisy), **off)
        silent(**batch)
        assert silent.consistency_loss.abs() <= 1e-7
        noisy = silent


def test_noise_lands_on_the_embedding_output_and_is_uniform(tiny, batch) -> None:
    inputs: list[torch.Tensor] = []
    tiny.layer_norm.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    rxf.wrap(tiny, eps=0.25)(**batch)
    diff = inputs[1] - inputs[0]
    assert diff.abs().max() <= 0.25 + 1e-6 and diff.abs().max() > 0.2
    assert diff.std().item() == pytest.approx(0.25 / 3**0.5, rel=0.2)


@pytest.mark.parametrize("detach", [True, False])
def test_embedding_gradient_paths(detach: bool, batch) -> None:
    torch.manual_seed(0)
    net = TinyClassifier()
    reference = copy.deepcopy(net)
    model = rxf.wrap(net, eps=0.5, detach_noisy_embedding=detach)
    noises: list[torch.Tensor] = []
    sampler = model._sampler
    model._sampler = lambda e, eps: noises.append(sampler(e, eps)) or noises[-1]
    model(**batch)
    model.consistency_loss.backward()
    got = net.embed_tokens.weight.grad

    def logits(embeddings: torch.Tensor) -> torch.Tensor:
        handle = reference.embed_tokens.register_forward_hook(lambda m, a, out: embeddings)
        try:
            return reference(batch["input_ids"])["logits"]
        finally:
            handle.remove()

    emb = reference.embed_tokens(batch["input_ids"])
    noisy_base = emb.detach() if detach else emb
    expected_term = two_direction_kl(logits(emb), logits(noisy_base + noises[0])).float()
    expected_term.backward()
    assert torch.allclose(got, reference.embed_tokens.weight.grad, atol=1e-6)
    # the two settings differ: the noisy pass's gradient reaches the table only without detach
    only_clean = torch.autograd.grad(
        two_direction_kl(logits(emb), logits(emb.detach() + noises[0])), emb
    )[0]
    both = torch.autograd.grad(two_direction_kl(logits(emb), logits(emb + noises[0])), emb)[0]
    assert not torch.allclose(only_clean, both)


def test_forward_counts(tiny, batch) -> None:
    calls = count_calls(tiny)
    model = rxf.wrap(tiny, eps=0.1)
    model(**batch)
    assert len(calls) == 2
    model.eval()
    calls.clear()
    out = model(**batch)
    assert len(calls) == 1 and model.consistency_loss.item() == 0.0
    assert model.last_stats["mode"] == "eval"
    assert torch.allclose(out["loss"], nn.functional.cross_entropy(out["logits"], batch["labels"]))


def test_lambda_zero_is_one_noisy_pass(tiny, batch) -> None:
    tiny.eval()
    clean = tiny(**batch)["logits"]
    model = rxf.wrap(tiny, eps=0.5, r3f_lambda=0.0).train()  # it starts in tiny's eval mode
    calls = count_calls(tiny)
    out = model(**batch)
    assert len(calls) == 1
    assert not torch.allclose(out["logits"], clean)  # the single pass carried noise
    assert model.consistency_loss.item() == 0.0 and model.last_stats["mode"] == "noise_only"
    assert model.last_stats["noise_to_signal"] > 0


def test_token_level_term_masks_ignored_labels() -> None:
    torch.manual_seed(0)
    tagger = TinyTagger()
    model = rxf.wrap(tagger, eps=0.5)
    outputs = count_calls(tagger)
    ids = torch.randint(0, 50, (2, 5))
    labels = torch.tensor([[1, 2, -100, -100, -100], [0, 1, 2, 0, -100]])
    model(ids, labels=labels)
    clean, noisy = outputs[0]["logits"], outputs[1]["logits"]
    keep = labels != -100
    expected = two_direction_kl(clean[keep], noisy[keep])
    assert torch.allclose(model.consistency_loss.double(), expected, atol=1e-6)
    assert model.last_stats["positions"] == 6


def test_unwrap_restores_state_dict_and_leaves_no_hooks(tiny, batch) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    model = rxf.wrap(tiny, eps=0.1)
    assert list(model.state_dict()) == list(before)
    model(**batch)
    plain = rxf.unwrap(model)
    assert plain is tiny
    after = plain.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())


def test_exception_in_noisy_pass_leaves_no_hook(tiny, batch) -> None:
    class Boom(RuntimeError):
        pass

    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("noisy pass failed")

    tiny.encoder.register_forward_hook(explode)
    model = rxf.wrap(tiny, eps=0.1)
    with pytest.raises(Boom):
        model(**batch)
    assert not tiny.embed_tokens._forward_hooks


def test_r4f_spectral_norm_trains_and_bakes(tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=1e-3, spectral_norm_head=True)
    assert model.rxf_targets.head_name == "classifier"
    assert "classifier.out_proj.parametrizations.weight.original" in model.state_dict()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(10):
        opt.zero_grad()
        model(**batch)["loss"].backward()
        opt.step()
    model.eval()
    wrapped_logits = model(**batch)["logits"]
    plain = rxf.unwrap(model)
    assert torch.equal(plain(**batch)["logits"], wrapped_logits)
    assert type(plain.classifier.out_proj) is nn.Linear
    assert set(plain.state_dict()) == set(TinyClassifier().state_dict())
    sigma = torch.linalg.matrix_norm(plain.classifier.out_proj.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    dense_sigma = torch.linalg.matrix_norm(plain.classifier.dense.weight.detach(), ord=2)
    assert dense_sigma.item() != pytest.approx(1.0, abs=1e-2)  # "final" scope only


def test_r4f_scope_all_normalizes_every_head_linear(tiny, batch) -> None:
    model = rxf.wrap(tiny, spectral_norm_head=True, spectral_norm_scope="all")
    model(**batch)
    plain = rxf.unwrap(model)
    for linear in (plain.classifier.dense, plain.classifier.out_proj):
        sigma = torch.linalg.matrix_norm(linear.weight.detach(), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-3)


def test_state_dict_round_trip_through_wrapper_and_parents(tiny) -> None:
    model = rxf.wrap(tiny)
    parent = nn.ModuleDict({"net": model})
    keys = list(parent.state_dict())
    assert keys == [f"net.{k}" for k in tiny.state_dict()]
    other = TinyClassifier()
    parent.load_state_dict({f"net.{k}": v for k, v in other.state_dict().items()})
    assert torch.equal(tiny.embed_tokens.weight, other.embed_tokens.weight)
    model.load_state_dict(TinyClassifier().state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict({})


def test_wrapper_forwards_attributes_and_signature(tiny, batch) -> None:
    tiny.custom_flag = "yes"
    model = rxf.wrap(tiny)
    assert model.custom_flag == "yes" and model.layer_norm is tiny.layer_norm
    assert list(inspect.signature(model.forward).parameters) == ["input_ids", "labels"]
    clone = copy.deepcopy(model)
    assert clone.module is not tiny
    clone(**batch)
    assert clone.consistency_loss.requires_grad
    with pytest.raises(AttributeError):
        model.does_not_exist  # noqa: B018


def test_explain_names_choices(tiny) -> None:
    text = str(rxf.explain(tiny, spectral_norm_head=True))
    assert "embed_tokens (Embedding, by rxf.defaults)" in text
    assert "classifier" in text and "uniform, eps=1e-05" in text
    assert not any(type(m).__name__.startswith("Parametrized") for m in tiny.modules())
    assert rxf.explain(rxf.wrap(tiny, eps=0.2)).config.eps == 0.2


def test_wrap_errors() -> None:
    tiny = TinyClassifier()
    with pytest.raises(RXFError, match="already wrapped"):
        rxf.wrap(rxf.wrap(tiny))
    with pytest.raises(
        RXFError, match=r"RXFConfig.embedding='encoder.embed'.*Did you mean 'encoder'"
    ):
        rxf.wrap(TinyClassifier(), embedding="encoder.embed")
    with pytest.raises(RXFError, match=r"no token embedding in Sequential.*RXFConfig\(embedding="):
        rxf.wrap(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(RXFError, match="head"):
        rxf.wrap(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)), spectral_norm_head=True)
    with pytest.raises(RXFError, match="needs a Linear"):
        rxf.wrap(TinyClassifier(), spectral_norm_head=True, head="layer_norm")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rxf.wrap("model")  # type: ignore[arg-type]
    with pytest.raises(RXFError, match="expects a model returned by rxf.wrap"):
        rxf.unwrap(TinyClassifier())


def test_embedding_that_is_never_called_is_an_error(batch) -> None:
    model = rxf.wrap(TinyClassifier(), embedding="embed_positions")
    model(**batch)  # positions are embedded: fine
    idle = TinyClassifier()
    idle.unused = nn.Embedding(3, 16)
    with pytest.raises(RXFError, match="'unused' was not called"):
        rxf.wrap(idle, embedding="unused")(**batch)


def test_logits_not_found_is_an_error(batch) -> None:
    class Opaque(TinyClassifier):
        def forward(self, input_ids, labels=None):
            return {"scores": super().forward(input_ids)["logits"]}

    with pytest.raises(RXFError, match="could not find logits"):
        rxf.wrap(Opaque())(**batch)


def test_overrides_validated_like_config() -> None:
    with pytest.raises(Exception, match="eps"):
        rxf.wrap(TinyClassifier(), eps=-1.0)
    base = rxf.RXFConfig(eps=0.3, r3f_lambda=0.5)
    model = rxf.wrap(TinyClassifier(), base, r3f_lambda=2.0)
    assert (model.rxf_config.eps, model.rxf_config.r3f_lambda) == (0.3, 2.0)
    model = rxf.wrap(TinyClassifier(), {"eps": 0.2})
    assert model.rxf_config.eps == 0.2
