"""Bad data stops ``rxf finetune`` before any model is built, with one line naming the
file, the line and the problem; and the data sources read through ``datasets``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rxf_runner import main, models, train
from rxf_runner.config import DataSettings, FinetuneConfig
from rxf_runner.data import load
from rxf_runner.loading import ConfigError, load_config

from tests.runner.conftest import sentences, write_config


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was built or trained despite bad data")

    monkeypatch.setattr(train, "fit", forbidden)
    monkeypatch.setattr(models, "build", forbidden)


def _csv(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    lines = ["text,label", *(f"{t},{y}" for t, y in rows)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _error(tmp_path: Path, data: str, capsys: pytest.CaptureFixture[str], model: str = "") -> str:
    config = write_config(tmp_path, f"{model}data: {{{data}}}\noutput: out\n")
    assert main(["finetune", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rxf: error: ") and "\n" not in err, err  # one line
    return err.removeprefix("rxf: error: ")


ROWS = sentences(6)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [(t, "pos") for t, _ in ROWS],
            "reviews.csv: column 'label' holds one class only ('pos', 18 rows)",
        ),
        (
            [*ROWS[:2], (ROWS[2][0], ""), *ROWS[3:]],
            "reviews.csv, line 4: empty label in column 'label'",
        ),
        ([*ROWS[:2], (ROWS[2][0], "  "), *ROWS[3:]], "reviews.csv, line 4: empty label"),
        (
            [(ROWS[0][0], "pos"), (ROWS[1][0], "neg"), (ROWS[2][0], "Pos "), *ROWS[3:]],
            "reviews.csv, line 4: label 'Pos ' differs from 'pos' (line 2) only by case or "
            "whitespace",
        ),
    ],
)
def test_bad_labels(
    tmp_path: Path, rows: Any, message: str, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _csv(tmp_path / "reviews.csv", rows)
    assert message in _error(tmp_path, "dataset: reviews.csv", capsys)


def test_not_utf8_names_the_line_and_the_encoding(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*ROWS[:4], ("un café très bon", "pos"), *ROWS[4:]]
    _csv(tmp_path / "reviews.csv", rows, encoding="latin-1")
    err = _error(tmp_path, "dataset: reviews.csv", capsys)
    assert "reviews.csv, line 6: not UTF-8 (byte 0xe9); it looks like" in err
    encoding = err.split("it looks like ")[1].split(":")[0]
    assert "café".encode("latin-1").decode(encoding) == "café"  # the named encoding reads it
    assert f"iconv -f {encoding} -t utf-8" in err


def test_utf8_bom_is_refused(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(tmp_path / "reviews.csv", ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    err = _error(tmp_path, "dataset: reviews.csv", capsys)
    assert "reviews.csv, line 1: the file starts with a UTF-8 byte-order mark (BOM)" in err


def test_folders_where_files_are_expected(
    tmp_path: Path, tiny_csv: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "evals").mkdir()
    err = _error(tmp_path, f"dataset: {tiny_csv.name}, eval_file: evals", capsys)
    assert "data.eval_file: " in err and "evals' is a folder; give a file" in err
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.csv").write_text("text,label\n")
    err = _error(tmp_path, "dataset: texts", capsys)
    assert (
        "texts' is a folder, but neither an image folder" in err and "give the file's path" in err
    )
    err = _error(
        tmp_path,
        "dataset: digits",
        capsys,
        model="model: {name: 'timm:resnet10t', weights: evals}\n",
    )
    assert "model.weights: " in err and "is a folder; give a file" in err


def test_text_checkpoint_without_tokenizer_is_not_taken_for_an_image_model(
    tmp_path: Path,
    tiny_bert: Path,
    tiny_csv: Path,
    no_training: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((tiny_bert / "config.json").read_bytes())
    err = _error(tmp_path, f"dataset: {tiny_csv.name}", capsys, model="model: {name: bare}\n")
    assert "holds a text model but no tokenizer files" in err
    assert "tokenizer.save_pretrained(" in err and "takes image" not in err
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(
        json.dumps({"architectures": ["ViTForImageClassification"], "image_size": 32})
    )
    cfg = load_config(
        write_config(tmp_path, "model: {name: vit}\ndata: {dataset: digits}\n"), FinetuneConfig
    )
    assert cfg.model.kind == "image"


def test_output_is_relative_to_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = load_config(write_config(sub, "output: results/x\n"), FinetuneConfig)
    assert cfg.output == sub / "results" / "x"
    assert load_config(None, FinetuneConfig).output == Path("rxf-results")


def _labelled_rows() -> dict[str, list[Any]]:
    return {"text": [t for t, _ in ROWS], "label": [y for _, y in ROWS]}


def test_saved_dataset_folder_json_array_and_parquet(tmp_path: Path) -> None:
    import datasets

    rows = _labelled_rows()
    names = sorted(set(rows["label"]))
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    saved = tmp_path / "saved"
    encoded = {"text": rows["text"], "label": [names.index(y) for y in rows["label"]]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(encoded, features=features)}
    ).save_to_disk(str(saved))
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([{"text": t, "label": y} for t, y in ROWS]))
    parquet = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(parquet))
    for source in (saved, array, parquet):
        settings = DataSettings.model_validate({"dataset": str(source)})
        assert settings.kind == "text"
        got = load(str(source), settings)
        assert got.label_names == names  # ClassLabel integers come back as their names
        assert [got.label_names[i] for i in got.labels] == rows["label"]
        assert list(got.items) == rows["text"]


def test_hub_names_go_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    asked: list[tuple[Any, ...]] = []

    def fake(name: str, config: str | None = None) -> Any:
        asked.append((name, config))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(_labelled_rows())})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    settings = DataSettings.model_validate({"dataset": "hub:glue:sst2", "text_column": "text"})
    got = load("hub:glue:sst2", settings)
    assert asked == [("glue", "sst2")] and len(got) == len(ROWS)
    with pytest.raises(ConfigError, match="column 'sentence' is absent from 'hub:glue:sst2'"):
        load(
            "hub:glue:sst2",
            DataSettings.model_validate({"dataset": "hub:glue:sst2", "text_column": "sentence"}),
        )
