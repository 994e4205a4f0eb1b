"""A malformed config stops ``rxf finetune`` / ``rxf probe`` before any training, with one
clear message (exit status 2, no traceback) that names the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rxf_runner import main, models, train
from rxf_runner.config import FinetuneConfig
from rxf_runner.loading import ConfigError, load_config

from tests.runner.conftest import write_config


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was built or trained despite a bad config")

    monkeypatch.setattr(train, "fit", forbidden)
    monkeypatch.setattr(models, "build", forbidden)


CASES = [
    ("trian: {epochs: 1}", "unknown key 'trian'; did you mean 'train'?"),
    ("data: {label_colum: y}", "unknown key 'data.label_colum'; did you mean 'label_column'?"),
    ("train: {epochs: many}", "train.epochs: Input should be a valid integer"),
    ("train: {lr: -1}", "train.lr: Input should be greater than 0"),
    ("seeds: [1, 1]", "seeds: [1, 1] lists an entry twice"),
    (
        "methods: [standard, r5f]",
        "methods[1]: Input should be 'standard', 'r3f', 'r4f', 'rdrop', 'neftune', 'smart' or "
        "'r3f_shared_dropout'",
    ),
    ("rxf: {method: smart}", "rxf: method is chosen by `methods:`: list 'smart' there"),
    (
        "methods: [rdrop]\nrxf: {mode: concat}",
        "method 'rdrop' with these rxf settings: method='rdrop' runs two passes",
    ),
    (  # every refused method is named, not only the first
        "methods: [rdrop, smart]\nrxf: {mode: concat}",
        "| method 'smart' with these rxf settings: method='smart' runs its ascent passes",
    ),
    (
        "methods: [smart]\nper_method: {smart: {smart_stepz: 2}}",
        "method 'smart' with these rxf settings: smart_stepz: Extra inputs are not permitted",
    ),
    (
        "methods: [smart]\nper_method: {smart: {eps: 0}}",
        "method 'smart' with these rxf settings: method='smart' with eps=0",
    ),
    ("per_method: {smart: {smart_steps: 2}}", "per_method.smart: 'smart' is not a wrapped method"),
    ("per_method: {r3f: {spectral_norm_head: true}}", "list 'r4f' in methods instead"),
    ("rxf: {noise_type: pink}", "unknown noise_type 'pink'"),
    ("rxf: {epsilon: 0.1}", "unknown key 'rxf.epsilon'; did you mean 'eps'?"),
    ("rxf: {spectral_norm_head: true}", "list 'r4f' in methods instead"),
    ("data: {dataset: imdb}", "unknown dataset 'imdb': not a built-in (bbc_news, digits)"),
    ("data: {dataset: nowhere.csv}", "no file or folder"),
    ("data: {eval_file: nowhere.csv}", "data.eval_file: file"),
    ("model: {name: bert-huge}", "unknown model 'bert-huge'"),
    ("model: {name: timm:not_a_net}", "unknown timm model 'not_a_net'"),
    ("data: {dataset: digits}", "model 'minilm' takes text but data.dataset 'digits' holds images"),
    ("- just\n- a list", "must be a mapping of sections"),
    ("train: {epochs: 3", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), CASES)
def test_bad_config_is_one_clear_message(
    text: str, message: str, tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, text)
    assert main(["finetune", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rxf: error: {config}: ")
    assert message in err
    assert "Traceback" not in err and "errors.pydantic.dev" not in err


def test_columns_and_classes_are_checked_against_the_file(
    tmp_path: Path,
    tiny_csv: Path,
    tiny_bert: Path,
    no_training: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for data, message in [
        ("label_column: sentiment", "data.label_column: column 'sentiment' is absent from"),
        ("text_column: review", "data.text_column: column 'review' is absent from"),
        ("classes: [pos, happy]", "data.classes: ['happy'] not among the labels"),
        ("eval_per_class: 12", "class 'neg' has 12 examples: too few"),
    ]:
        config = write_config(
            tmp_path,
            f"model: {{name: {tiny_bert}}}\n"
            f"data: {{dataset: {tiny_csv.name}, {data}}}\n"
            f"output: {tmp_path / 'out'}",
        )
        assert main(["finetune", str(config)]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "(it has: text, label)" in err or "column" not in message


def test_missing_config_file_and_probe_errors(
    tmp_path: Path, no_training: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["finetune", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    config = write_config(tmp_path, "probes: [{name: a, data: {dataset: nope}}]")
    assert main(["probe", str(config)]) == 2
    assert "probes[0].data.dataset: unknown dataset 'nope'" in capsys.readouterr().err


def test_checkpoint_folder_must_hold_a_config(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        load_config(write_config(tmp_path, "model: {name: ckpt}"), FinetuneConfig)


def test_paths_are_relative_to_the_config_file(tmp_path: Path, tiny_csv: Path) -> None:
    sub = tmp_path / "configs"
    sub.mkdir()
    cfg = load_config(write_config(sub, f"data: {{dataset: ../{tiny_csv.name}}}"), FinetuneConfig)
    assert Path(cfg.data.dataset).resolve() == tiny_csv.resolve()


def test_defaults_are_the_embedded_default_and_print_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = load_config(None, FinetuneConfig)
    assert (cfg.model.name, cfg.data.dataset, cfg.methods, cfg.seeds) == (
        "minilm",
        "bbc_news",
        ["standard", "r3f", "rdrop", "r3f_shared_dropout"],
        [0, 1, 2, 3],
    )
    assert cfg.rxf.eps == 0.1 and cfg.train.eval_every == 6
    assert main(["finetune", "--print-config", "-o", str(tmp_path / "x")]) == 0
    printed = capsys.readouterr().out
    again = load_config(write_config(tmp_path, printed), FinetuneConfig)
    assert again == cfg.model_copy(update={"output": tmp_path / "x"})
