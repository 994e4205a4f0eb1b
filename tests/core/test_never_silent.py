"""Every way rxf was found to drop or distort the regularizer silently (issue 9), by kind.

Each test pins the right value: the unchecked gradient, the loss with the term, the
per-example NEFTune scale, the KL over the unmasked classes, ...
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import pickle
import warnings
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import rxf
from rxf.divergence import js, kl, mse, symmetric_kl
from rxf.errors import RXFError

from .conftest import TinyClassifier


def two_direction_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    return ((p - q) * (p.log() - q.log())).sum(-1).mean()


# --- kind 1: reentrant checkpointing must not lose the noisy pass's gradient ----------------


class LlamaLike(nn.Module):
    """Token lookup straight into checkpointed blocks: no parameterised layer in between."""

    def __init__(self, reentrant: bool | None = None) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(40, 16)
        self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(2)])
        self.score = nn.Linear(16, 3)
        self.reentrant = reentrant

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict:
        x = self.embed_tokens(input_ids)
        for block in self.blocks:
            if self.reentrant is None:
                x = torch.tanh(block(x))
            else:
                x = checkpoint(lambda h, b=block: torch.tanh(b(h)), x, use_reentrant=self.reentrant)
        logits = self.score(x.mean(1))
        return {"logits": logits, "loss": F.cross_entropy(logits, labels)}


def _grads_of_step(model: nn.Module, batch: dict, **cfg: Any) -> dict[str, torch.Tensor]:
    wrapped = rxf.wrap(model, eps=0.3, **cfg)
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "None of the inputs have ..."
        wrapped(**batch)["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("frozen_embedding", [False, True])
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_noisy_pass_keeps_its_gradient(reentrant: bool, frozen_embedding: bool):
    torch.manual_seed(0)
    plain = LlamaLike()
    batch = {"input_ids": torch.randint(0, 40, (3, 5)), "labels": torch.tensor([0, 1, 2])}
    checked = copy.deepcopy(plain)
    checked.reentrant = reentrant
    for model in (plain, checked):
        if frozen_embedding:  # the LoRA recipe: frozen table, enable_input_require_grads()
            model.embed_tokens.weight.requires_grad_(False)
            model.embed_tokens.register_forward_hook(lambda m, a, out: out.requires_grad_(True))
    want, got = _grads_of_step(plain, batch), _grads_of_step(checked, batch)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_detached_noisy_embedding_still_gets_no_gradient_into_the_table() -> None:
    torch.manual_seed(0)
    model = LlamaLike(reentrant=True)
    batch = {"input_ids": torch.randint(0, 40, (3, 5)), "labels": torch.tensor([0, 1, 2])}
    wrapped = rxf.wrap(model, eps=0.3)
    wrapped(**batch)
    wrapped.consistency_loss.backward()
    emb_grad = model.embed_tokens.weight.grad
    assert emb_grad is not None and emb_grad.abs().sum() > 0
    for block in model.blocks:
        assert block.weight.grad is not None and block.weight.grad.abs().sum() > 0


# --- kind 2: no autograd state kept on the module -------------------------------------------


@pytest.mark.parametrize("r4f", [False, True])
def test_deepcopy_ema_and_state_dict_after_a_step(r4f: bool, tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=0.1, spectral_norm_head=r4f)
    out = model(**batch)
    clone = copy.deepcopy(model)  # before backward: the graph is still alive
    ema = torch.optim.swa_utils.AveragedModel(model)
    out["loss"].backward()
    assert model.consistency_loss.grad_fn is None  # released by the backward
    copy.deepcopy(model)
    ema.update_parameters(model)
    assert set(model.state_dict()) == set(clone.state_dict())
    clone(**batch)["loss"].backward()  # the copy trains
    assert clone.consistency_loss.grad_fn is None
    assert clone.module is not tiny and clone.rxf_targets.embedding is clone.module.embed_tokens
    assert list(type(model.forward).__mro__) and clone.forward.__self__ is clone


def test_pickle_round_trip_of_an_r3f_model(tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=0.1)
    model(**batch)  # a graph is alive: pickling must not need it
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(**batch)["logits"], model(**batch)["logits"])
    assert pickle.loads(pickle.dumps(model)).rxf_config == model.rxf_config


def test_pickling_an_r4f_model_names_the_ways_to_save(tiny) -> None:
    model = rxf.wrap(tiny, spectral_norm_head=True)
    with pytest.raises(RXFError, match=r"state_dict\(\).*own save method.*rxf.unwrap"):
        torch.save(model, io.BytesIO())


# --- kind 3: the term reaches whatever container holds the loss -----------------------------


class Pair(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Frozen:
    loss: torch.Tensor
    logits: torch.Tensor


class ReadOnly:
    def __init__(self, loss: torch.Tensor, logits: torch.Tensor) -> None:
        self._loss, self.logits = loss, logits

    @property
    def loss(self) -> torch.Tensor:
        return self._loss


class Returning(TinyClassifier):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        out = super().forward(input_ids, labels)
        loss, logits = out["loss"], out["logits"]
        if self.kind == "tuple":  # Hugging Face return_dict=False
            return (loss, logits)
        if self.kind == "list":
            return [loss, logits]
        return {"namedtuple": Pair, "frozen": Frozen, "readonly": ReadOnly}[self.kind](loss, logits)


def _loss_and_logits(out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
        return out[0], out[1]
    return out.loss, out.logits


@pytest.mark.parametrize("kind", ["tuple", "list", "namedtuple", "frozen"])
def test_the_term_is_added_to_any_loss_container(kind: str, batch) -> None:
    torch.manual_seed(0)
    model = rxf.wrap(Returning(kind), eps=0.5)
    out = model(**batch)
    loss, logits = _loss_and_logits(out)
    term = model.consistency_loss
    assert term.item() > 1e-6
    task = F.cross_entropy(logits, batch["labels"])
    torch.testing.assert_close(loss, task + term)
    assert type(out) is {"tuple": tuple, "list": list, "namedtuple": Pair, "frozen": Frozen}[kind]


def test_an_unsettable_loss_is_an_error_naming_the_fix(batch) -> None:
    with pytest.raises(RXFError, match=r"ReadOnly.*model.consistency_loss"):
        rxf.wrap(Returning("readonly"), eps=0.5)(**batch)


def test_an_unused_term_warns_once_with_what_to_do(tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=0.5)
    inputs = {"input_ids": batch["input_ids"]}  # no labels: the model returns no loss
    with warnings.catch_warnings():
        warnings.simplefilter("error", rxf.RXFUnusedTermWarning)
        out = model(**inputs)
        F.cross_entropy(out["logits"], batch["labels"]).backward()  # forgot the term
        with pytest.raises(rxf.RXFUnusedTermWarning, match=r"\+ model.consistency_loss"):
            model(**inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rxf.RXFUnusedTermWarning)
        model(**inputs)  # warned once only
        model(**inputs)


@pytest.mark.parametrize("use", ["read", "returned_loss", "backward"])
def test_a_used_term_does_not_warn(use: str, tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rxf.RXFUnusedTermWarning)
        for _ in range(2):
            if use == "returned_loss":
                model(**batch)["loss"].backward()
            else:
                out = model(input_ids=batch["input_ids"])
                if use == "read":
                    _ = F.cross_entropy(out["logits"], batch["labels"]) + model.consistency_loss
                else:
                    model._term.backward()


# --- kind 4: other hooks and several calls on the embedding ---------------------------------


def _noisy_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output + 0.01 * torch.randn_like(output) if module.training else output


def test_another_perturbing_hook_is_refused_at_wrap(tiny) -> None:
    tiny.embed_tokens.register_forward_hook(_noisy_hook)
    state = torch.get_rng_state()
    with pytest.raises(RXFError, match=r"another forward hook.*'embed_tokens'.*_noisy_hook"):
        rxf.wrap(tiny)
    assert torch.equal(torch.get_rng_state(), state)  # the probe left the RNG alone


def test_another_perturbing_hook_is_refused_at_the_first_training_forward(tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=0.1)
    tiny.embed_tokens.register_forward_hook(_noisy_hook)  # as Trainer(neftune_noise_alpha=)
    with pytest.raises(RXFError, match=r"NEFTune alpha of its TrainingArguments unset"):
        model(**batch)
    with pytest.raises(RXFError, match="another forward hook"):
        rxf.wrap(rxf.unwrap(model), r3f_lambda=0.0)


def test_hooks_that_do_not_change_the_output_are_fine(tiny, batch) -> None:
    tiny.embed_tokens.register_forward_hook(lambda m, a, out: out.requires_grad_(True))
    tiny.embed_tokens.register_forward_hook(lambda m, a, out: out.clone())
    model = rxf.wrap(tiny, eps=0.5)
    model(**batch)["loss"].backward()
    assert model.last_stats["divergence"] > 0


class Siamese(nn.Module):
    """A bi-encoder: one embedding table for two texts, a head on both."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(30, 8)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor, other_ids: torch.Tensor) -> torch.Tensor:
        a, b = self.embed_tokens(input_ids).mean(1), self.embed_tokens(other_ids).mean(1)
        return self.head(torch.cat([a, b], -1))


@pytest.mark.parametrize("calls", [None, "first"])
def test_every_embedding_call_of_the_noisy_pass_is_perturbed(calls: str | None) -> None:
    torch.manual_seed(0)
    net = Siamese()
    seen: list[torch.Tensor] = []
    net.head.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    ids, other = torch.randint(0, 30, (2, 4)), torch.randint(0, 30, (2, 3))
    model = rxf.wrap(net, eps=0.5, embedding_calls=calls)
    model(ids, other)
    clean, noisy = seen
    tower_a_moved = not torch.allclose(clean[:, :8], noisy[:, :8])
    tower_b_moved = not torch.allclose(clean[:, 8:], noisy[:, 8:])
    assert tower_a_moved
    assert tower_b_moved is (calls is None)
    stats = model.last_stats
    assert stats["embedding_calls"] == 2
    assert stats["perturbed_calls"] == (2 if calls is None else 1)
    assert "all calls" in str(rxf.explain(model)) or calls == "first"


# --- kind 5: a model that writes into its input mapping and returns it ----------------------


class MutatesInput(nn.Module):
    """Like sentence-transformers: writes its outputs into the features dict and returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(30, 8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, features: dict) -> dict:
        features["logits"] = self.classifier(self.embed_tokens(features["input_ids"]).mean(1))
        return features


def test_each_pass_gets_its_own_copy_of_mapping_arguments() -> None:
    torch.manual_seed(0)
    net = MutatesInput()
    features = {"input_ids": torch.randint(0, 30, (3, 4))}
    model = rxf.wrap(net, eps=0.5, embedding="embed_tokens")
    seen: list[torch.Tensor] = []
    net.classifier.register_forward_hook(lambda m, a, out: seen.append(out))
    out = model(features)
    clean, noisy = seen
    assert out["logits"] is clean  # the clean output comes back, not the noisy one
    torch.testing.assert_close(model.consistency_loss.double(), two_direction_kl(clean, noisy))
    assert model.consistency_loss.item() > 1e-6
    assert set(features) == {"input_ids"}  # the caller's dict is left alone


def test_the_same_output_object_from_both_passes_is_refused() -> None:
    class Cached(MutatesInput):
        def forward(self, features: dict) -> dict:
            self.__dict__.setdefault("_out", {})
            self._out["logits"] = self.classifier(self.embed_tokens(features["input_ids"]).mean(1))
            return self._out

    model = rxf.wrap(Cached(), eps=0.5, embedding="embed_tokens")
    with pytest.raises(RXFError, match="same object from the clean and the noisy pass"):
        model({"input_ids": torch.randint(0, 30, (3, 4))})


# --- kind 6: NEFTune scale per packed example -----------------------------------------------


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(30, 16)
        self.lm_head = nn.Linear(16, 30)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None):
        return self.lm_head(self.embed_tokens(input_ids))


def test_neftune_scales_each_packed_example_by_its_own_length() -> None:
    torch.manual_seed(0)
    net = Packed()
    ids = torch.randint(0, 30, (1, 12))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]])  # examples of 4 and 8
    captured: list[torch.Tensor] = []
    model = rxf.wrap(net, noise_type="neftune", eps=5.0, r3f_lambda=0.0)
    net.lm_head.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    torch.manual_seed(3)
    model(ids, position_ids=positions)
    noise = captured[0] - net.embed_tokens(ids).detach()
    torch.manual_seed(3)
    unit = torch.empty(1, 12, 16).uniform_(-1.0, 1.0)
    scale = torch.tensor([5.0 / math.sqrt(4 * 16)] * 4 + [5.0 / math.sqrt(8 * 16)] * 8)
    torch.testing.assert_close(noise, unit * scale.view(1, 12, 1), atol=1e-6, rtol=0)


def test_a_plugin_noise_declaring_lengths_and_mask_gets_them() -> None:
    got: dict[str, Any] = {}

    def recording(embeddings: torch.Tensor, eps: float, mask=None, lengths=None) -> torch.Tensor:
        got.update(mask=mask, lengths=lengths)
        return torch.zeros(embeddings.shape)

    class Plugin:
        @rxf.hookimpl
        def rxf_register_noise_types(self) -> dict:
            return {"test_recording": recording}

    pm = rxf.plugin_manager()
    plugin = Plugin()
    pm.register(plugin)
    try:
        model = rxf.wrap(Packed(), noise_type="test_recording", r3f_lambda=0.0)
        positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
        model(torch.zeros(2, 6, dtype=torch.long), position_ids=positions)
    finally:
        pm.unregister(plugin)
    assert got["mask"] is None  # no attention mask given: no padding known
    assert got["lengths"].tolist() == [[3, 3, 3, 2, 2, 1], [6] * 6]


# --- kind 7: -inf logits on both sides contribute 0 -----------------------------------------


@pytest.mark.parametrize("fn", [symmetric_kl, kl, js, mse], ids=lambda f: f.__name__)
def test_masked_classes_contribute_zero_with_finite_gradients(fn) -> None:
    torch.manual_seed(0)
    clean, noisy = torch.randn(4, 5), torch.randn(4, 5)
    masked = torch.tensor([[0, 0, 0, 1, 1]] * 2 + [[1, 0, 0, 0, 0]] * 2).bool()
    c = clean.masked_fill(masked, float("-inf")).requires_grad_(True)
    n = noisy.masked_fill(masked, float("-inf")).requires_grad_(True)
    value = fn(c, n)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(c.grad).all() and torch.isfinite(n.grad).all()
    # independent reference: the same divergence over the available classes only, per row
    rows = []
    for i in range(4):
        keep = ~masked[i]
        rows.append(fn(clean[i : i + 1, keep], noisy[i : i + 1, keep]))
    torch.testing.assert_close(value, torch.stack(rows).mean())
    assert (c.grad[masked] == 0).all()


# --- kind 8: known-incompatible combinations say so -----------------------------------------


def test_r4f_on_a_sharded_head_is_refused_with_the_order_to_use(tiny) -> None:
    tiny.classifier.out_proj.weight = nn.Parameter(torch.empty(0))  # ZeRO-3's partitioned view
    with pytest.raises(RXFError, match=r"sharded.*Wrap before sharding"):
        rxf.wrap(tiny, spectral_norm_head=True)


def test_share_dropout_masks_with_concat_is_refused_at_config_time() -> None:
    with pytest.raises(ValueError, match="share_dropout_masks=True needs mode='two_pass'"):
        rxf.RXFConfig(share_dropout_masks=True, mode="concat")


# --- kind 9: embedding modules that return a tuple ------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.proj(x), (2, 3)


class Vision(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.head = nn.Linear(8, 3)
        self.sizes: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, size = self.patch_embed(x)
        self.sizes.append(size)
        return self.head(tokens.mean(1))


def test_noise_goes_to_the_first_tensor_of_a_tuple_output() -> None:
    torch.manual_seed(0)
    net = Vision()
    model = rxf.wrap(net, eps=0.5, embedding="patch_embed")
    seen: list[torch.Tensor] = []
    net.head.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    model(torch.randn(2, 6, 4))
    assert net.sizes == [(2, 3), (2, 3)]  # the rest passes through untouched
    assert not torch.allclose(seen[0], seen[1])
    assert model.consistency_loss.item() > 0
    assert model.last_stats["noise_to_signal"] > 0


# --- kind 10: the wrapper starts in the inner model's mode ----------------------------------


def test_the_wrapper_starts_in_the_inner_models_mode(tiny, batch) -> None:
    tiny.eval()
    calls: list[Any] = []
    tiny.register_forward_hook(lambda m, a, out: calls.append(out))
    model = rxf.wrap(tiny)
    assert not model.training
    model(**batch)
    assert len(calls) == 1 and model.last_stats["mode"] == "eval"
    mixed = TinyClassifier()
    mixed.layer_norm.eval()  # a frozen part stays frozen
    wrapped = rxf.wrap(mixed)
    assert wrapped.training and not mixed.layer_norm.training


# --- share_dropout_masks: the term measures the noise alone ---------------------------------


def test_shared_dropout_masks_leave_only_the_noise_in_the_term(batch) -> None:
    torch.manual_seed(0)
    net = TinyClassifier(p=0.5)
    silent = rxf.wrap(net, eps=0.0, share_dropout_masks=True)
    silent(**batch)
    assert silent.consistency_loss.item() == 0.0  # same masks, no noise: identical passes
    rdrop = rxf.wrap(rxf.unwrap(silent), eps=0.0)
    rdrop(**batch)
    assert rdrop.consistency_loss.item() > 1e-4  # fresh masks: dropout alone makes a term

    model = rxf.wrap(rxf.unwrap(rdrop), eps=0.3, share_dropout_masks=True)
    seen: list[torch.Tensor] = []
    net.classifier.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    torch.manual_seed(9)
    model(**batch)
    after = torch.get_rng_state()
    # reference by hand: clean pass from state S; the noise drawn from the stream after it;
    # the noisy pass replays S, so its dropout masks are the clean pass's
    inner, ids = rxf.unwrap(model), batch["input_ids"]
    torch.manual_seed(9)
    start = torch.get_rng_state()
    clean = inner(ids)["logits"].detach()
    emb = inner.embed_tokens(ids).detach()
    noise = torch.empty(emb.shape).uniform_(-0.3, 0.3)
    assert torch.equal(torch.get_rng_state(), after)  # the global stream moves on as usual
    torch.set_rng_state(start)
    handle = inner.embed_tokens.register_forward_hook(lambda m, a, out: out.detach() + noise)
    noisy = inner(ids)["logits"].detach()
    handle.remove()
    torch.testing.assert_close(seen[0], clean)
    torch.testing.assert_close(seen[1], noisy)
    expected = two_direction_kl(clean, noisy).float()
    torch.testing.assert_close(model.consistency_loss.detach(), expected, rtol=1e-5, atol=1e-7)


# --- found by a new-user review: more silent cases -----------------------------------------


class SqueezedRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed_tokens(input_ids).mean(1)).squeeze(-1)  # (batch,)


def test_one_value_per_example_gets_the_real_valued_divergence() -> None:
    torch.manual_seed(0)
    net = SqueezedRegressor()
    seen: list[torch.Tensor] = []
    net.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    model = rxf.wrap(net, eps=1.0)
    model(torch.randint(0, 10, (4, 5)))
    stats = model.last_stats
    assert stats["divergence_name"] == "mse" and stats["positions"] == 4
    clean, noisy = seen
    torch.testing.assert_close(model.consistency_loss.detach(), ((clean - noisy) ** 2).mean())


def test_a_wrapper_undone_by_unwrap_refuses_to_run(tiny, batch) -> None:
    model = rxf.wrap(tiny, eps=0.1, spectral_norm_head=True)
    model(**batch)["loss"].backward()
    plain = rxf.unwrap(model)
    with pytest.raises(RXFError, match=r"undone by rxf.unwrap.*wrap it again"):
        model(**batch)
    with pytest.raises(RXFError, match="undone by rxf.unwrap"):
        rxf.explain(model)
    model.eval()
    torch.testing.assert_close(model(**batch)["logits"], plain.eval()(**batch)["logits"])
    plain.train()
    rxf.wrap(plain, eps=0.1)(**batch)  # wrapping again works


def test_a_wrong_head_path_is_an_error_also_without_r4f() -> None:
    with pytest.raises(RXFError, match=r"RXFConfig.head='clasifier'.*Did you mean 'classifier'"):
        rxf.wrap(TinyClassifier(), head="clasifier")


def test_a_noise_of_the_wrong_shape_names_the_sampler(batch) -> None:
    class Plugin:
        @rxf.hookimpl
        def rxf_register_noise_types(self) -> dict:
            def flat(embeddings: torch.Tensor, eps: float) -> torch.Tensor:
                return torch.zeros(3)

            return {"test_flat": flat}

    pm = rxf.plugin_manager()
    plugin = Plugin()
    pm.register(plugin)
    try:
        model = rxf.wrap(TinyClassifier(), noise_type="test_flat")
        with pytest.raises(RXFError, match=r"'flat' returned \(3,\) for embeddings of shape"):
            model(**batch)
    finally:
        pm.unregister(plugin)
