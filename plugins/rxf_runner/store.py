"""Finished runs on disk, keyed by a fingerprint of everything that changes a result: the
settings, the content of the data and model files, and the software versions.

Each fingerprint has its own folder ``runs/<key>/`` with one JSON file per (method, seed),
written the moment a run ends, so an interrupted command keeps them and a rerun skips them;
a changed setting or an edited data file gives a new key, so its runs are made afresh (the
old ones are kept, and the command says what changed).

Example:
    >>> import tempfile
    >>> store = RunStore(Path(tempfile.mkdtemp()), {"lr": 1e-4})
    >>> store.check(restart=False)
    []
    >>> store.load("r3f", 0) is None
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

_CONFIG = "run-config.json"
_LARGE = 64 * 2**20  # files above this are keyed by size and modification time


class RunStore:
    """The ``runs/<key>/`` folder of an output folder for one fingerprint."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str, sort_keys=True))
        text = json.dumps(self.fingerprint, sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:12]
        self.runs = self.folder / "runs" / self.key

    def check(self, restart: bool) -> list[str]:
        """Prepare the folder; ``restart`` deletes every stored run. Returns one note per
        other fingerprint that has runs here, naming what differs (they are not used)."""
        root = self.folder / "runs"
        if restart and root.is_dir():
            shutil.rmtree(root)
        notes = []
        for saved in sorted(root.glob(f"*/{_CONFIG}")) if root.is_dir() else []:
            runs = [p for p in saved.parent.glob("*.json") if p.name != _CONFIG]
            if saved.parent == self.runs or not runs:
                continue
            changed = _changed(json.loads(saved.read_text()), self.fingerprint)
            notes.append(
                f"{len(runs)} run(s) in {saved.parent} were made with other settings (changed: "
                f"{', '.join(changed)}); they are kept and not used"
            )
        self.runs.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.runs / _CONFIG, self.fingerprint)
        return notes

    def path(self, method: str, seed: int) -> Path:
        """Where the run of ``method`` with ``seed`` is saved."""
        return self.runs / f"{method}-seed{seed}.json"

    def load(self, method: str, seed: int) -> dict[str, Any] | None:
        """The saved result of a finished run, or ``None``."""
        path = self.path(method, seed)
        if not path.is_file():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except json.JSONDecodeError:  # a run cut while writing never reaches os.replace
            return None

    def save(self, method: str, seed: int, result: dict[str, Any]) -> Path:
        """Write a finished run (atomically: a crash never leaves half a file)."""
        path = self.path(method, seed)
        _write_atomic(path, result)
        return path


def content_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and contents);
    files over 64 MiB count by size and modification time."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        stat = file.stat()
        if stat.st_size > _LARGE:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def source_key(source: str, builtin: dict[str, str]) -> str:
    """What identifies a data or model source: the package version of a built-in, the name
    of a hub source, else the content digest of the file or folder."""
    if source in builtin:
        return f"{builtin[source]}=={_version(builtin[source])}"
    if source.startswith(("hub:", "timm:")):
        return source
    return content_digest(source)


def software() -> dict[str, str]:
    """Versions of the libraries a run's numbers depend on."""
    names = ("rxf", "torch", "transformers", "accelerate", "timm", "scikit-learn")
    return {name: _version(name) for name in names}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _write_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in _changed(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if old != new else []
