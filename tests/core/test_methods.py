"""The family in one wrapper: R-Drop and SMART against formulas written out here.

Every expected number is computed in this file from the papers' equations (float64, by
hand), never by calling rxf's own divergences or ascent.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rxf
from rxf.config import PRESETS, RXFConfig

# --------------------------------------------------------------------------- config, presets


def test_each_preset_sets_its_papers_defaults() -> None:
    assert RXFConfig.preset("r3f") == RXFConfig()  # the default is R3F with the reference's
    r4f = RXFConfig.preset("r4f")
    assert r4f.spectral_norm_head and r4f.eps == 1e-5 and r4f.noise_type == "uniform"
    rdrop = RXFConfig.preset("rdrop")
    assert (rdrop.method, rdrop.eps, rdrop.r3f_lambda) == ("rdrop", 0.0, 1.0)
    neftune = RXFConfig.preset("neftune")
    assert (neftune.noise_type, neftune.eps, neftune.r3f_lambda) == ("neftune", 5.0, 0.0)
    smart = RXFConfig.preset("smart")
    assert (smart.method, smart.eps, smart.smart_init_std, smart.smart_step_size) == (
        "smart",
        1e-5,
        1e-5,
        1e-3,
    )
    assert (smart.smart_steps, smart.smart_norm, smart.noise_type) == (1, "linf", "normal")
    assert smart.smart_norm_level == "example"  # Algorithm 1 normalizes g_i per example
    assert smart.detach_noisy_embedding is False
    assert set(PRESETS) == {"r3f", "r4f", "rdrop", "neftune", "smart"}


def test_a_preset_takes_validated_overrides_and_unknown_names_are_refused() -> None:
    assert RXFConfig.preset("smart", smart_steps=3).smart_steps == 3
    with pytest.raises(ValueError, match="unknown rxf preset 'smrt'.*'smart'"):
        RXFConfig.preset("smrt")
    with pytest.raises(ValueError, match="smart_steps"):
        RXFConfig.preset("smart", smart_steps=0)


def test_a_methods_defaults_apply_to_fields_left_unset() -> None:
    assert RXFConfig(method="rdrop").eps == 0.0
    assert RXFConfig(method="smart") == RXFConfig.preset("smart")
    assert RXFConfig(method="smart", noise_type="uniform").noise_type == "uniform"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "rdrop", "eps": 0.1}, "method='rdrop' adds no noise"),
        ({"method": "rdrop", "share_dropout_masks": True}, "identical passes"),
        ({"method": "rdrop", "mode": "concat"}, "mode='concat' is not supported"),
        ({"method": "smart", "mode": "concat"}, "mode='concat'"),
        ({"method": "smart", "eps": 0.0}, "radius 0"),
        ({"method": "smart", "r3f_lambda": 0.0}, "no term at all"),
        ({"method": "rdrop", "r3f_lambda": 0.0}, "no term at all"),
    ],
)
def test_combinations_without_a_term_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RXFConfig(**fields)


# --------------------------------------------------------------------------- R-Drop


class FixedDropout(nn.Module):
    """Dropout whose masks are given: call i uses masks[i] (inverted dropout, scale 1/(1-p))."""

    def __init__(self, masks: list[Tensor], p: float) -> None:
        super().__init__()
        self.masks, self.p, self.calls = masks, p, 0

    def forward(self, x: Tensor) -> Tensor:
        mask = self.masks[self.calls % len(self.masks)]
        self.calls += 1
        return x * mask / (1 - self.p) if self.training else x


class Classifier(nn.Module):
    """Embedding → mean over tokens → dropout → Linear; CE loss when labels are given."""

    def __init__(self, dropout: nn.Module, classes: int = 3, token_level: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 6)
        self.body = nn.Linear(6, 6)
        self.dropout = dropout
        self.out = nn.Linear(6, classes)
        self.token_level = token_level

    def logits(self, ids: Tensor) -> Tensor:
        hidden = torch.tanh(self.body(self.embed(ids)))
        if not self.token_level:
            hidden = hidden.mean(1)
        return self.out(self.dropout(hidden))

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.logits(input_ids)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.flatten(0, -2), labels.flatten())
        return out


def _hand_sym_kl(a: Tensor, b: Tensor) -> Tensor:
    """KL(P‖Q) + KL(Q‖P) per position, written out (float64)."""
    p, q = torch.softmax(a.double(), -1), torch.softmax(b.double(), -1)
    return (p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)


def _hand_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """−log softmax(logits)[label] per position (float64), label −100 excluded by the caller."""
    logp = torch.log_softmax(logits.double(), -1)
    safe = labels.clamp_min(0)
    return -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)


def _masks(shape: tuple[int, ...], seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(shape, generator=g) > 0.3).float() for _ in range(2)]


def test_rdrop_loss_on_fixed_dropout_masks_equals_the_formula() -> None:
    masks = _masks((4, 6), seed=1)
    model = Classifier(FixedDropout(masks, p=0.3))
    ids, labels = torch.randint(0, 11, (4, 5), generator=torch.Generator().manual_seed(2)), None
    labels = torch.tensor([0, 2, 1, 2])
    alpha = 0.7
    wrapped = rxf.wrap(model, rxf.RXFConfig.preset("rdrop", r3f_lambda=alpha)).train()
    out = wrapped(input_ids=ids, labels=labels)

    # by hand: the two passes with the two masks, Liang et al. (2021) Eq. 1-3, halved
    with torch.no_grad():
        hidden = torch.tanh(model.body(model.embed(ids))).mean(1)
        first = model.out(hidden * masks[0] / 0.7)
        second = model.out(hidden * masks[1] / 0.7)
    nll = (_hand_nll(first, labels) + _hand_nll(second, labels)).mean()  # L_NLL, per example
    l_kl = 0.5 * _hand_sym_kl(first, second).mean()  # L_KL = ½(KL(P1‖P2) + KL(P2‖P1))
    expected = 0.5 * (nll + alpha * l_kl)  # §2.1's objective, halved: the task loss averaged
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(wrapped.consistency_loss) == pytest.approx(float(0.5 * alpha * l_kl), rel=1e-6)
    assert wrapped.last_stats["method"] == "rdrop"
    assert wrapped.last_stats["divergence"] == pytest.approx(float(2 * l_kl), rel=1e-6)
    assert model.dropout.calls == 2  # two passes, no third
    # the second pass's output is kept also when the model returned its loss
    torch.testing.assert_close(wrapped.second_output["logits"].detach(), second)

    # the gradient is the formula's gradient
    out["loss"].backward()
    got = model.out.weight.grad.clone()
    model.zero_grad()
    hidden = torch.tanh(model.body(model.embed(ids))).mean(1)
    a, b = model.out(hidden * masks[0] / 0.7), model.out(hidden * masks[1] / 0.7)
    hand = 0.5 * (
        (_hand_nll(a, labels) + _hand_nll(b, labels)).mean()
        + alpha * 0.5 * _hand_sym_kl(a, b).mean()
    )
    hand.backward()
    torch.testing.assert_close(got.double(), model.out.weight.grad.double(), rtol=1e-5, atol=1e-7)


def test_rdrop_token_level_masks_padding_in_both_terms() -> None:
    masks = _masks((3, 4, 6), seed=3)
    model = Classifier(FixedDropout(masks, p=0.3), classes=5, token_level=True)
    ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([[1, 2, -100, -100], [0, 4, 3, -100], [2, 2, 2, 2]])
    alpha = 2.0
    wrapped = rxf.wrap(model, rxf.RXFConfig.preset("rdrop", r3f_lambda=alpha)).train()
    out = wrapped(input_ids=ids, labels=labels)

    real = labels != -100
    with torch.no_grad():
        hidden = torch.tanh(model.body(model.embed(ids)))
        first = model.out(hidden * masks[0] / 0.7)
        second = model.out(hidden * masks[1] / 0.7)
    nll = (_hand_nll(first, labels) + _hand_nll(second, labels))[real].mean()
    l_kl = 0.5 * _hand_sym_kl(first, second)[real].mean()  # per real token
    assert float(out["loss"]) == pytest.approx(float(0.5 * (nll + alpha * l_kl)), rel=1e-6)
    assert wrapped.last_stats["positions"] == int(real.sum())


def test_rdrop_without_a_model_loss_keeps_the_second_output_and_warns_when_unused() -> None:
    masks = _masks((2, 6), seed=5)
    model = Classifier(FixedDropout(masks, p=0.3))
    wrapped = rxf.wrap(model, rxf.RXFConfig.preset("rdrop")).train()
    ids, labels = torch.randint(0, 11, (2, 3)), torch.tensor([0, 1])
    out = wrapped(input_ids=ids)
    second = wrapped.second_output
    assert not torch.equal(out["logits"], second["logits"])  # the other dropout mask
    loss = (
        F.cross_entropy(out["logits"], labels) + F.cross_entropy(second["logits"], labels)
    ) / 2 + wrapped.consistency_loss
    loss.backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", rxf.RXFUnusedTermWarning)
        out = wrapped(input_ids=ids)  # the previous step used both: no warning
    second = wrapped.second_output
    (
        F.cross_entropy(out["logits"], labels)
        + F.cross_entropy(second["logits"], labels)
        + wrapped.consistency_loss
    ).backward()
    # this step reads the term but not the second output: the next forward warns
    (
        F.cross_entropy(wrapped(input_ids=ids)["logits"], labels) + wrapped.consistency_loss
    ).backward()
    with pytest.warns(rxf.RXFUnusedTermWarning, match="second_output"):
        wrapped(input_ids=ids)


def test_rdrop_refuses_a_loss_from_one_pass_only() -> None:
    class OneLoss(Classifier):
        def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
            out = super().forward(input_ids, labels)
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls % 2 == 0:
                out.pop("loss", None)
            return out

    wrapped = rxf.wrap(OneLoss(nn.Dropout(0.3)), rxf.RXFConfig.preset("rdrop")).train()
    with pytest.raises(rxf.RXFError, match="returned a loss from one pass only"):
        wrapped(input_ids=torch.randint(0, 11, (2, 3)), labels=torch.tensor([0, 1]))


# --------------------------------------------------------------------------- SMART


class Fixed:
    """A noise type returning a given tensor: the ascent's start δ₀, known to the test."""

    def __init__(self, start: Tensor) -> None:
        self.start = start

    def __call__(self, embeddings: Tensor, eps: float) -> Tensor:
        return self.start.float() * eps  # scaled by smart_init_std, like any noise type

    @rxf.hookimpl
    def rxf_register_noise_types(self) -> dict[str, object]:
        return {"test_fixed_start": self}


class Encoder(nn.Module):
    """Float64, no dropout: Embedding → tanh(Linear) → [mean] → Linear."""

    def __init__(self, token_level: bool = False, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(13, 5)
        self.body = nn.Linear(5, 5)
        self.out = nn.Linear(5, classes)
        self.token_level = token_level
        self.double()

    def from_embeddings(self, e: Tensor) -> Tensor:
        hidden = torch.tanh(self.body(e) * 3)
        return self.out(hidden if self.token_level else hidden.mean(1))

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.from_embeddings(self.embed(input_ids))


def _hand_norm(v: Tensor, norm: str, level: str) -> Tensor:
    dims = (-1,) if level == "token" else tuple(range(1, v.dim()))
    if norm == "linf":
        return v.abs().amax(dims, keepdim=True)
    return v.pow(2).sum(dims, keepdim=True).sqrt()


def _hand_ascent(
    model: Encoder, ids: Tensor, start: Tensor, cfg: RXFConfig
) -> tuple[Tensor, Tensor]:
    """SMART's Algorithm 1 in float64: K normalized steps, each projected; the term at δ_K."""
    e = model.embed(ids).detach()
    clean = model.from_embeddings(e).detach()
    delta = (start.float() * cfg.smart_init_std).double()  # a noise type's float32 draw
    for _ in range(cfg.smart_steps):
        delta = delta.detach().requires_grad_(True)
        value = _hand_sym_kl(clean, model.from_embeddings(e + delta)).mean()
        (grad,) = torch.autograd.grad(value, delta)
        size = _hand_norm(grad, cfg.smart_norm, cfg.smart_norm_level)
        delta = delta.detach() + cfg.smart_step_size * grad / torch.where(size > 0, size, 1.0)
        if cfg.smart_norm == "linf":  # Π onto the ε-ball
            eps = torch.tensor(cfg.eps, dtype=torch.float64)
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
        else:
            size = _hand_norm(delta, "l2", cfg.smart_norm_level)
            delta = torch.where(size > cfg.eps, delta * cfg.eps / size, delta)
    term = cfg.r3f_lambda * _hand_sym_kl(clean, model.from_embeddings(e + delta)).mean()
    return delta.detach(), term.detach()


@pytest.fixture
def fixed_start() -> Any:
    start = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(7))
    noise = Fixed(start)
    rxf.plugin_manager().register(noise)
    yield start
    rxf.plugin_manager().unregister(noise)


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize(
    ("norm", "level"), [("linf", "token"), ("linf", "example"), ("l2", "token"), ("l2", "example")]
)
def test_smart_perturbation_after_k_steps_equals_the_hand_written_ascent(
    fixed_start: Tensor, steps: int, norm: str, level: str
) -> None:
    model = Encoder()
    ids = torch.randint(0, 13, (3, 4), generator=torch.Generator().manual_seed(8))
    # η ≫ ε: the projection decides the result (the public implementations skip it)
    cfg = RXFConfig.preset(
        "smart",
        eps=0.05,
        smart_init_std=0.02,
        smart_step_size=0.3,
        smart_steps=steps,
        smart_norm=norm,
        smart_norm_level=level,
        r3f_lambda=1.5,
        noise_type="test_fixed_start",
    )
    seen: list[Tensor] = []
    model.body.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    wrapped = rxf.wrap(model, cfg).train()
    wrapped(ids)
    assert len(seen) == 2 + steps  # clean, K ascent passes, the final pass
    delta = seen[-1] - seen[0]  # what reached the model in the final pass
    expected, term = _hand_ascent(model, ids, fixed_start, cfg)
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-13)
    assert float(_hand_norm(delta, norm, level).max()) <= cfg.eps * (1 + 1e-12)  # inside
    assert float(_hand_norm(delta, norm, level).max()) == pytest.approx(cfg.eps, rel=1e-9)
    assert float(wrapped.consistency_loss) == pytest.approx(float(term), rel=1e-10)
    assert wrapped.last_stats["perturbation_to_eps"] == pytest.approx(1.0, rel=1e-6)
    # the ascent computed no parameter gradient
    assert all(p.grad is None for p in model.parameters())


def test_smart_term_trains_the_parameters_like_the_formula(fixed_start: Tensor) -> None:
    model = Encoder(token_level=True)
    ids = torch.randint(0, 13, (3, 4), generator=torch.Generator().manual_seed(9))
    cfg = RXFConfig.preset(
        "smart", eps=0.05, smart_init_std=0.02, smart_step_size=0.3, smart_steps=2
    ).with_overrides(noise_type="test_fixed_start")
    wrapped = rxf.wrap(model, cfg).train()
    logits = wrapped(ids)
    (logits.sum() * 0 + wrapped.consistency_loss).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    delta, _ = _hand_ascent(model, ids, fixed_start, cfg)
    model.zero_grad()
    e = model.embed(ids)  # trained through the final pass too (detach_noisy_embedding=False)
    hand = _hand_sym_kl(model.from_embeddings(e), model.from_embeddings(e + delta)).mean()
    hand.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-13, msg=name)


def test_smart_ascent_leaves_batchnorm_statistics_to_the_clean_pass() -> None:
    class WithBatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.norm = nn.BatchNorm1d(4)
            self.out = nn.Linear(4, 2)

        def forward(self, ids: Tensor) -> Tensor:
            return self.out(self.norm(self.embed(ids).mean(1)))

    model = WithBatchNorm()
    rxf.wrap(model, RXFConfig.preset("smart", smart_steps=2, eps=0.1)).train()(
        torch.randint(0, 10, (4, 3))
    )
    assert int(model.norm.num_batches_tracked) == 1


def test_smart_with_reentrant_checkpointing_is_refused_with_the_fix() -> None:
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, ids: Tensor) -> Tensor:
            hidden = checkpoint(self.body, self.embed(ids), use_reentrant=True)
            return self.out(hidden.mean(1))

    wrapped = rxf.wrap(Checkpointed(), RXFConfig.preset("smart", eps=0.1)).train()
    with pytest.raises(rxf.RXFError, match="use_reentrant': False"):
        wrapped(torch.randint(0, 10, (2, 3)))


def test_smart_draws_its_start_from_the_noise_type_at_init_std() -> None:
    model = Encoder()
    ids = torch.randint(0, 13, (3, 4))
    seen: list[Tensor] = []
    model.body.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    # a huge ε and a tiny step: the first ascent pass's perturbation is δ₀ itself
    cfg = RXFConfig.preset("smart", eps=10.0, smart_init_std=0.5, smart_step_size=1e-9)
    torch.manual_seed(11)
    rxf.wrap(model, cfg).train()(ids)
    torch.manual_seed(11)
    expected = torch.empty(seen[0].shape, dtype=torch.float32).normal_(0.0, 0.5)  # N(0, σ²)
    torch.testing.assert_close(seen[1] - seen[0], expected.double(), rtol=0, atol=1e-7)


def test_rdrop_on_a_model_without_dropout_warns_once_that_the_term_is_zero() -> None:
    ids, labels = torch.randint(0, 11, (2, 3)), torch.tensor([0, 1])
    wrapped = rxf.wrap(Classifier(nn.Identity()), rxf.RXFConfig.preset("rdrop")).train()
    with pytest.warns(rxf.RXFZeroTermWarning, match="no.*active"):
        wrapped(input_ids=ids, labels=labels)
    assert wrapped.last_stats["divergence"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", rxf.RXFZeroTermWarning)
        wrapped(input_ids=ids, labels=labels)  # once only: no host sync after the first step
        dropout = rxf.wrap(Classifier(nn.Dropout(0.3)), rxf.RXFConfig.preset("rdrop")).train()
        dropout(input_ids=ids, labels=labels)


def test_a_perturbation_rounded_away_by_bf16_autocast_warns_instead_of_a_silent_zero() -> None:
    # SMART's start (1e-5) on float32 embeddings of norm ~1 vanishes in the first bf16
    # matmul: every ascent gradient is 0, the term is 0; rxf says so once
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    wrapped = rxf.wrap(net, RXFConfig.preset("smart", eps=0.1, smart_step_size=0.5)).train()
    ids = torch.randint(0, 10, (4, 5))
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.warns(rxf.RXFZeroTermWarning, match="Raise smart_init_std"),
    ):
        wrapped(ids)
    assert wrapped.last_stats["divergence"] == 0.0
    # a start above bf16's resolution reaches the model and the ascent moves to the ball
    wrapped = rxf.wrap(
        rxf.unwrap(wrapped), RXFConfig.preset("smart", eps=0.1, smart_init_std=0.05)
    ).train()
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("error", rxf.RXFZeroTermWarning)
        wrapped(ids)
    assert wrapped.last_stats["divergence"] > 0
    assert wrapped.last_stats["perturbation_to_eps"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- lookups reused


def _embedding_backwards(loss: Tensor) -> int:
    """How many embedding lookups the loss's graph differentiates into the table."""
    seen, stack, count = set(), [loss.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__.startswith("EmbeddingBackward")
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return count


class TokenDropout(Classifier):
    """Replaces random tokens inside forward: each pass looks up different ids."""

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        dropped = torch.where(torch.rand(input_ids.shape) < 0.4, 0, input_ids)
        return super().forward(dropped, labels)


class InPlaceScale(Classifier):
    """Scales its embedding output in place (the lookup's output changes after the call)."""

    def logits(self, ids: Tensor) -> Tensor:
        e = self.embed(ids)
        e.mul_(2.0)
        hidden = torch.tanh(self.body(e)).mean(1)
        return self.out(self.dropout(hidden))


CONFIGS = {
    "rdrop": RXFConfig.preset("rdrop"),
    "smart": RXFConfig.preset("smart", eps=0.05, smart_init_std=0.02, smart_step_size=0.3),
    "r3f-undetached": RXFConfig(eps=0.1, detach_noisy_embedding=False),
    "r3f": RXFConfig(eps=0.1),
}


def _step(model_cls: type, cfg: RXFConfig, reuse: bool) -> tuple[Tensor, dict[str, Tensor], int]:
    model = model_cls(nn.Dropout(0.3))
    wrapped = rxf.wrap(model, cfg).train()
    wrapped._reuse_lookups = reuse
    ids = torch.randint(1, 11, (4, 5), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    out = wrapped(input_ids=ids, labels=torch.tensor([0, 1, 2, 0]))
    lookups = _embedding_backwards(out["loss"])
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad for n, p in model.named_parameters()}, lookups


@pytest.mark.parametrize("name", list(CONFIGS))
def test_later_passes_reuse_the_clean_lookup_with_the_same_numbers(name: str) -> None:
    loss, grads, lookups = _step(Classifier, CONFIGS[name], reuse=True)
    fresh_loss, fresh_grads, fresh_lookups = _step(Classifier, CONFIGS[name], reuse=False)
    assert torch.equal(loss, fresh_loss)
    for key in grads:  # the table's gradient: summation order only
        torch.testing.assert_close(grads[key], fresh_grads[key], rtol=1e-6, atol=1e-8)
    trained = 1 + (name != "r3f")  # passes whose lookup the table is trained through
    assert fresh_lookups == trained
    assert lookups == 1  # one table gradient: the passes' gradients summed before it


@pytest.mark.parametrize("model_cls", [TokenDropout, InPlaceScale])
@pytest.mark.parametrize("name", ["rdrop", "smart"])
def test_a_lookup_is_not_reused_when_the_ids_or_the_output_changed(
    model_cls: type, name: str
) -> None:
    loss, grads, lookups = _step(model_cls, CONFIGS[name], reuse=True)
    fresh_loss, fresh_grads, _ = _step(model_cls, CONFIGS[name], reuse=False)
    assert torch.equal(loss, fresh_loss)
    for key in grads:
        torch.testing.assert_close(grads[key], fresh_grads[key], rtol=0, atol=0)
    assert lookups == 2


# --------------------------------------------------------------------------- a new user's review


def test_switching_method_on_a_config_that_chose_one_is_refused() -> None:
    # rdrop -> r3f by an override kept eps=0: "R3F" without noise, silently
    with pytest.raises(ValueError, match=r"RXFConfig.preset\('r3f'"):
        RXFConfig.preset("rdrop").with_overrides(method="r3f")
    with pytest.raises(ValueError, match="would keep"):
        rxf.wrap(Classifier(nn.Dropout(0.1)), RXFConfig.preset("smart"), method="r3f")
    # a config that never chose a method may take one
    assert RXFConfig(r3f_lambda=0.5).with_overrides(method="smart").method == "smart"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"smart_steps": 3}, "smart_steps only apply to method='smart'"),
        ({"method": "rdrop", "noise_type": "normal"}, "noise_type do not apply"),
        ({"method": "rdrop", "detach_noisy_embedding": False}, "do not apply"),
        ({"method": "neftune"}, r"not a method.*RXFConfig.preset\('neftune'\)"),
    ],
)
def test_settings_that_would_be_ignored_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RXFConfig(**fields)


def test_a_preset_by_name_in_wrap_and_in_a_mapping() -> None:
    wrapped = rxf.wrap(Classifier(nn.Dropout(0.1)), "smart")
    assert wrapped.rxf_config == RXFConfig.preset("smart")
    cfg = RXFConfig.from_dict({"preset": "smart", "smart_steps": 2})
    assert cfg == RXFConfig.preset("smart", smart_steps=2)
    assert RXFConfig.from_dict({"smart_steps": 1}).method == "r3f"  # defaults: not changed


def test_rdrop_needs_no_token_embedding() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))
    wrapped = rxf.wrap(net, "rdrop").train()
    wrapped(torch.randn(5, 4))
    assert wrapped.last_stats["divergence"] > 0
    assert "not used" in str(rxf.explain(wrapped))
    with pytest.raises(rxf.RXFError, match="no token embedding"):  # noise needs one
        rxf.wrap(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), "r3f")


@pytest.mark.parametrize("preset", ["r3f", "rdrop"])
def test_a_training_forward_under_inference_mode_runs(preset: str) -> None:
    # failed with "Inference tensors do not track version counter" (lookup reuse)
    with torch.inference_mode():
        model = Classifier(nn.Dropout(0.3))
        wrapped = rxf.wrap(model, preset).train()
        out = wrapped(input_ids=torch.randint(0, 11, (2, 3)), labels=torch.tensor([0, 1]))
    assert out["loss"].is_inference()


def test_smart_under_inference_mode_is_refused_with_the_fix() -> None:
    with torch.inference_mode():
        wrapped = rxf.wrap(Classifier(nn.Dropout(0.3)), "smart").train()
        with pytest.raises(rxf.RXFError, match=r"model.eval\(\)"):
            wrapped(input_ids=torch.randint(0, 11, (2, 3)))


class SequenceFirst(nn.Module):
    """Token ids (T, B), embeddings (T, B, D), logits (B, classes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(ids)).mean(0))


def test_smart_per_example_refuses_sequence_first_embeddings() -> None:
    # per example over dims 1.. of a (T, B, D) output mixed the examples of a position
    ids = torch.randint(0, 20, (7, 3))
    wrapped = rxf.wrap(SequenceFirst(), "smart", embedding="embed", eps=0.1).train()
    with pytest.raises(rxf.RXFError, match="smart_norm_level='token'"):
        wrapped(ids)
    token = rxf.wrap(
        rxf.unwrap(wrapped),
        RXFConfig.preset("smart", embedding="embed", eps=0.1, smart_norm_level="token"),
    ).train()
    token(ids)
    assert token.last_stats["perturbation_to_eps"] <= 1 + 1e-6


def test_one_warning_names_both_an_unused_term_and_an_unused_second_pass() -> None:
    wrapped = rxf.wrap(Classifier(nn.Dropout(0.3)), "rdrop").train()
    ids = torch.randint(0, 11, (2, 3))
    wrapped(input_ids=ids)["logits"].sum().backward()  # neither the term nor the second pass
    with pytest.warns(rxf.RXFUnusedTermWarning) as caught:
        wrapped(input_ids=ids)
    (message,) = [str(w.message) for w in caught]
    assert "consistency term" in message and "second_output" in message


def test_noise_below_the_autocast_dtypes_resolution_warns() -> None:
    # the embedding stays float32 under autocast, but the next bf16 layer rounds eps=1e-5
    # away: the term is then dropout's alone (the zero-term check cannot see it)
    model = Classifier(nn.Dropout(0.3))
    ids = torch.randint(0, 11, (4, 5))
    wrapped = rxf.wrap(model, "r3f").train()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.warns(rxf.RXFPrecisionWarning, match=r"torch.autocast\(torch.bfloat16\)"),
    ):
        wrapped(input_ids=ids)
    with warnings.catch_warnings():  # float32 compute: no warning
        warnings.simplefilter("error", rxf.RXFPrecisionWarning)
        rxf.wrap(rxf.unwrap(wrapped), "r3f").train()(input_ids=ids)


def test_warnings_point_at_the_users_line() -> None:
    # they pointed inside torch (nn/modules/module.py) before
    wrapped = rxf.wrap(Classifier(nn.Identity()), "rdrop").train()
    with pytest.warns(rxf.RXFZeroTermWarning) as caught:
        wrapped(input_ids=torch.randint(0, 11, (2, 3)))
    assert caught[0].filename == __file__
