"""Visual embeddings kept between questions and runs, so that a second
question (in memory) or a second run (on disk, with --cache-dir) does not
decode and encode the video again.

    cache = EmbeddingCache("~/.cache/htsparse-llama/embeddings")
    key = cache.key("clip.mp4", {"fps": 2, "max_frames": 64}, mmproj="mmproj.gguf")
    items = cache.get(key)            # None on a miss
    if items is None:
        items = encode(...)           # a list of {name: numpy array} dicts
        cache.put(key, items)

The key covers the video's *content* (sha256, so a renamed copy hits and an
edited file misses), the sampling settings and the mmproj that encoded it.
On disk an entry is a list of items, each a dict of numpy arrays (for an
image chunk: its embedding rows, positions, layout); what the arrays mean is
the caller's business. In memory it is the value put, as put: a list of
items, or an object with to_arrays() and nbytes (the runtime's Chunks), so
the embeddings are not held twice; get(key, from_arrays) turns a disk hit
into that object again.
Disk entries are written to a temporary name and renamed, so a crash never
leaves a half-written entry, and a damaged entry reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
Item = Dict[str, np.ndarray]

_HASH_CHUNK = 1 << 20
_FORMAT = 1  # bump when the entry layout changes: older entries then miss


class EmbeddingCache:
    """In memory (least recently used first out past max_memory_bytes), and
    on disk under cache_dir when one is given."""

    def __init__(self, cache_dir: Optional[PathLike] = None, max_memory_bytes: int = 2 << 30) -> None:
        self.dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.max_memory_bytes = int(max_memory_bytes)
        self._memory: "OrderedDict[str, Any]" = OrderedDict()
        self._memory_bytes = 0
        self._file_hashes: Dict[Tuple[str, int, int], str] = {}
        self.hits = self.misses = 0

    # -- keys ----------------------------------------------------------------------------------
    def file_hash(self, path: PathLike) -> str:
        """sha256 of a file's bytes; remembered per (path, size, mtime) so a
        file is read once per process."""
        st = os.stat(path)
        memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if memo not in self._file_hashes:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(_HASH_CHUNK), b""):
                    h.update(block)
            self._file_hashes[memo] = h.hexdigest()
        return self._file_hashes[memo]

    def key(self, media: PathLike, settings: Mapping[str, Any], mmproj: Optional[PathLike] = None) -> str:
        """The key of `media` encoded with `settings` (JSON-serialisable:
        fps, frame count, size, ...) by `mmproj`."""
        parts = {
            "format": _FORMAT,
            "media": self.file_hash(media),
            "settings": dict(settings),
            "mmproj": self.file_hash(mmproj) if mmproj is not None else None,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    # -- get / put -----------------------------------------------------------------------------
    def get(self, key: str, from_arrays: Optional[Callable[[List[Item]], Any]] = None) -> Any:
        """The value put under `key`, or None on a miss. A disk hit is the
        items, or from_arrays(items) when given (and then kept in memory so)."""
        value = self._memory.get(key)
        if value is not None:
            self._memory.move_to_end(key)
        elif self.dir is not None:
            value = self._read(self._path(key))
            if value is not None:
                value = from_arrays(value) if from_arrays is not None else value
                self._remember(key, value)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        """A list of items, or an object with to_arrays() and nbytes."""
        if not hasattr(value, "to_arrays"):
            value = [{name: np.asarray(a) for name, a in item.items()} for item in value]
        self._remember(key, value)
        if self.dir is not None:
            self._write(self._path(key), value.to_arrays() if hasattr(value, "to_arrays") else value)

    # -- memory --------------------------------------------------------------------------------
    @staticmethod
    def _nbytes(value: Any) -> int:
        if hasattr(value, "nbytes"):
            return int(value.nbytes)
        return sum(a.nbytes for item in value for a in item.values())

    def _remember(self, key: str, value: Any) -> None:
        if key in self._memory:
            self._memory_bytes -= self._nbytes(self._memory.pop(key))
        self._memory[key] = value
        self._memory_bytes += self._nbytes(value)
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= self._nbytes(old)

    # -- disk ----------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.npz"

    @staticmethod
    def _write(path: Path, items: List[Item]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{i}/{name}": a for i, item in enumerate(items) for name, a in item.items()}
        arrays["n_items"] = np.array(len(items))
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> Optional[List[Item]]:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                items: List[Item] = [{} for _ in range(int(data["n_items"]))]
                for name in data.files:
                    if name != "n_items":
                        i, field = name.split("/", 1)
                        items[int(i)][field] = data[name]
            return items
        except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile):
            return None  # damaged or from another layout: a miss, recomputed and rewritten
