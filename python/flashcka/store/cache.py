"""Similarity results kept in a store, keyed by the pair and the settings.

One JSON file per measure and settings: ``cache/<measure>-<sha256 of the settings>.json``
holding the settings themselves and ``{"a|b": value}`` for each computed pair. A layer's
key is ``model/layer@<hash of its features>``, the hash combining the recorded hashes of
every shard tensor of that layer: a model extracted again with other weights, data or
pooling has other keys, so an entry is reused only for the very features and settings
that gave it. The measures are symmetric, so a pair is stored once (its two keys sorted).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from . import _io


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


class Cache:
    def __init__(self, root: Path, settings: dict):
        self.settings = settings
        self.path = Path(root) / "cache" / f"{settings['measure']}-{settings_key(settings)}.json"
        self.entries: dict[str, float] = {}
        self.dirty = False
        if self.path.is_file():
            obj = _io.read_json(self.path, "cache file")
            if not isinstance(obj, dict) or obj.get("settings") != settings \
                    or not isinstance(obj.get("entries"), dict):
                raise _io.StoreError(f"cache file {self.path} does not hold results for "
                                     f"these settings; delete it (it is only a cache)")
            self.entries = obj["entries"]

    @staticmethod
    def pair(a: str, b: str) -> str:
        return f"{a}|{b}" if a <= b else f"{b}|{a}"

    def get(self, a: str, b: str):
        v = self.entries.get(self.pair(a, b))
        return None if v is None else (math.nan if v == "nan" else float(v))

    def put(self, a: str, b: str, value: float) -> None:
        self.entries[self.pair(a, b)] = "nan" if math.isnan(value) else float(value)
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            _io.write_json(self.path, {"settings": self.settings, "entries": self.entries})
            self.dirty = False
