"""Finished runs on disk: one JSON file per (method, seed), written the moment a run ends,
so an interrupted command keeps them and a rerun skips them.

Example:
    >>> import tempfile
    >>> store = RunStore(Path(tempfile.mkdtemp()), {"lr": 1e-4})
    >>> store.check(restart=False)
    >>> store.load("r3f", 0) is None
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rxf.cli.loading import ConfigError

_CONFIG = "run-config.json"


class RunStore:
    """The ``runs/`` folder of an output folder, tied to the settings that produced it."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.runs = self.folder / "runs"
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))

    def check(self, restart: bool) -> None:
        """Refuse to mix runs of different settings; ``restart`` deletes the old runs."""
        saved_path = self.folder / _CONFIG
        if restart:
            for path in self.runs.glob("*.json") if self.runs.is_dir() else []:
                path.unlink()
        elif saved_path.is_file():
            saved = json.loads(saved_path.read_text())
            changed = _changed(saved, self.fingerprint)
            if changed and any(self.runs.glob("*.json")):
                raise ConfigError(
                    f"{self.folder} holds runs made with other settings (changed: "
                    f"{', '.join(changed)}); use another output folder, or --restart to "
                    f"discard those runs"
                )
        self.runs.mkdir(parents=True, exist_ok=True)
        _write_atomic(saved_path, self.fingerprint)

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
