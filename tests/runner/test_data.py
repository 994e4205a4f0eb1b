"""Data sets of the CLI: the built-in ones, CSV / JSON-lines files, image folders, and the
stratified low-resource split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rxf_runner.config import DataSettings
from rxf_runner.data import load, split
from rxf_runner.loading import ConfigError


def settings(**fields: object) -> DataSettings:
    return DataSettings.model_validate(fields)


def test_bbc_news_is_read_from_the_installed_package() -> None:
    every = load("bbc_news", settings())
    assert every.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(every) == 2125  # 2225 files, 100 of them repeat an article: kept once
    assert len(set(every.items)) == len(every)
    assert Counter(every.labels)[3] > 400 and all(isinstance(t, str) for t in every.items)


def test_digits_are_images_in_zero_one() -> None:
    every = load("digits", settings(dataset="digits"))
    assert len(every) == 1797 and every.label_names == [str(d) for d in range(10)]
    assert every.items[0].shape == (8, 8) and 0 <= every.items[0].min() <= every.items[0].max() <= 1


def test_split_is_stratified_disjoint_and_seeded(tiny_csv: Path) -> None:
    cfg = settings(dataset=str(tiny_csv), train_per_class=3, eval_per_class=4)
    train, held = split(cfg)
    assert Counter(train.labels) == {0: 3, 1: 3, 2: 3}
    assert Counter(held.labels) == {0: 4, 1: 4, 2: 4}
    assert not set(train.items) & set(held.items)
    again = split(cfg)
    assert again[0].items == train.items and again[1].items == held.items
    other = split(cfg.model_copy(update={"split_seed": 1}))
    assert other[0].items != train.items
    # labels follow the natural order of the names unless classes says otherwise
    assert train.label_names == ["neg", "neu", "pos"]
    ordered, _ = split(cfg.model_copy(update={"classes": ["pos", "neg"]}))
    assert ordered.label_names == ["pos", "neg"] and set(ordered.labels) == {0, 1}
    every = load(str(tiny_csv), cfg)
    for text, label in zip(ordered.items, ordered.labels, strict=True):
        original = every.label_names[every.labels[every.items.index(text)]]
        assert original == ordered.label_names[label]


def test_all_examples_when_counts_are_null(tiny_csv: Path) -> None:
    train, held = split(settings(dataset=str(tiny_csv), train_per_class=None, eval_per_class=None))
    assert len(held) == 3 * 2 and len(train) == 3 * 10  # a fifth held out per class


def test_json_lines_with_own_columns_and_a_separate_eval_file(
    tiny_jsonl: Path, tmp_path: Path
) -> None:
    eval_file = tmp_path / "eval.json"  # a JSON array works too
    eval_file.write_text(
        json.dumps(
            [{"sentence": f"good {i}", "sentiment": "pos"} for i in range(3)]
            + [{"sentence": "bad", "sentiment": "neg"}] * 2
        )
    )
    cfg = settings(
        dataset=str(tiny_jsonl),
        eval_file=str(eval_file),
        text_column="sentence",
        label_column="sentiment",
        classes=["neg", "pos"],
        train_per_class=2,
        eval_per_class=None,
    )
    train, held = split(cfg)
    assert Counter(train.labels) == {0: 2, 1: 2}
    assert sorted(held.items) == ["bad", "bad", "good 0", "good 1", "good 2"]
    with pytest.raises(ConfigError, match="data.eval_file has labels"):
        split(cfg.model_copy(update={"classes": None}))


def test_malformed_json_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl, line 2: not JSON"):
        load(str(bad), settings())


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for name, value in (("cat", 30), ("dog", 220)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((5, 7, 3), value + i, np.uint8)).save(
                tmp_path / name / f"{i}.png"
            )
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    cfg = settings(dataset=str(tmp_path))
    assert cfg.kind == "image"
    every = load(str(tmp_path), cfg)
    assert every.label_names == ["cat", "dog"] and every.labels == [0, 0, 0, 1, 1, 1]
    assert [Path(p).name for p in every.items] == ["0.png", "1.png", "2.png"] * 2
