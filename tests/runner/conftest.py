"""Tiny offline fixtures for the CLI tests: a 1-layer BERT checkpoint with a word-level
tokenizer, and small labelled CSV / JSON-lines files a model can learn from."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

POSITIVE = ["good", "great", "fine", "nice", "happy", "bright"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dark", "grim"]
NEUTRAL = ["table", "chair", "door", "window", "floor", "wall"]
FILLER = ["the", "a", "day", "film", "was", "is", "very", "quite"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest (and steadiest on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fresh_accelerate() -> Iterator[None]:
    """accelerate keeps one state per process, fixed by its first Accelerator: a Trainer
    test's bf16 run earlier in the session would make the runner's ``mixed_precision: no``
    fail. Each runner test starts from a fresh state and leaves none behind."""
    from accelerate.state import AcceleratorState
    from rxf_runner import train

    def reset() -> None:
        AcceleratorState._reset_state(True)
        train.accelerator_for.cache_clear()

    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved BertForSequenceClassification (hidden 16, 1 layer) with its tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + POSITIVE + NEGATIVE + NEUTRAL + FILLER)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct examples per class of three classes (pos / neg / neutral), keyed by
    words."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    for label, words in (("pos", POSITIVE), ("neg", NEGATIVE), ("neu", NEUTRAL)):
        while sum(y == label for _, y in rows) < n:
            text = " ".join(rng.choice(FILLER) for _ in range(3)) + " " + rng.choice(words)
            if (text, label) not in rows:
                rows.append((text, label))
    rng.shuffle(rows)
    return rows


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(sentences(12))
    return path


@pytest.fixture
def tiny_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.jsonl"
    path.write_text(
        "".join(json.dumps({"sentence": t, "sentiment": y}) + "\n" for t, y in sentences(6, seed=1))
    )
    return path


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path
