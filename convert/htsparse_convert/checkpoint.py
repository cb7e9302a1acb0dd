"""A Hugging Face checkpoint directory, opened for conversion: its config and
its safetensors tensors, read lazily one at a time (a 7B model does not fit
twice in memory), with every way such a directory can be broken reported in
one clear sentence before anything is written.

    ckpt = open_checkpoint("Qwen2.5-VL-3B-Instruct/")
    ckpt.config["model_type"]      # "qwen2_5_vl"
    ckpt.tensors["model.embed_tokens.weight"]   # float32 numpy, loaded now
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """The directory is not a checkpoint this converter can read."""


class LazyTensors(Mapping[str, np.ndarray]):
    """HF parameter name -> float32 numpy array, read from its shard on access."""

    def __init__(self, where: Dict[str, Path]) -> None:
        self._where = where
        self._open: Dict[Path, Any] = {}
        self.on_load: Optional[Callable[[str], None]] = None  # called with each name loaded (progress bars)

    def _handle(self, name: str) -> Any:
        shard = self._where[name]  # KeyError for an unknown name, as a Mapping should
        if shard not in self._open:
            from safetensors import safe_open

            # torch, not numpy: numpy has no bfloat16, the usual checkpoint type.
            self._open[shard] = safe_open(str(shard), framework="pt")
        return self._open[shard]

    def __getitem__(self, name: str) -> np.ndarray:
        data = self._handle(name).get_tensor(name).float().numpy()
        if self.on_load is not None:
            self.on_load(name)
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> List[int]:
        """A tensor's shape without loading it."""
        return list(self._handle(name).get_slice(name).get_shape())


@dataclass
class Checkpoint:
    path: Path
    config: Dict[str, Any]
    tensors: LazyTensors

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    def json_file(self, name: str) -> Dict[str, Any]:
        """An optional JSON file beside the weights ({} when absent)."""
        f = self.path / name
        return _read_json(f) if f.is_file() else {}


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _shard_names(path: Path, shard: Path) -> List[str]:
    from safetensors import safe_open

    try:
        # numpy: listing names reads the header only, and needs no torch (the
        # CLI then says that torch is missing, not that the file is unreadable).
        with safe_open(str(shard), framework="np") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"{shard.relative_to(path)} is not a readable safetensors file: {exc}") from None


def _tensor_locations(path: Path) -> Dict[str, Path]:
    """Which shard holds each tensor, checked against the index when there is one."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{len(missing)} of the {len(shards)} shards named in {INDEX_FILE} are missing: "
                f"{', '.join(missing[:3])}"
            )
        where: Dict[str, Path] = {}
        for shard in shards:
            held = set(_shard_names(path, path / shard))
            listed = {n for n, s in weight_map.items() if s == shard}
            if listed - held:
                raise CheckpointError(
                    f"{shard} lacks {len(listed - held)} tensors that {INDEX_FILE} puts there, "
                    f"e.g. {sorted(listed - held)[0]!r}: the shards do not match the index"
                )
            where.update({n: path / shard for n in held})
        return where
    single = path / SINGLE_FILE
    shards = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    if not shards:
        others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        hint = f" (found {others[0]}: only safetensors checkpoints are read)" if others else ""
        raise CheckpointError(f"{path} has no .safetensors weights{hint}")
    if len(shards) > 1:
        raise CheckpointError(
            f"{path} has {len(shards)} .safetensors files but no {INDEX_FILE} to say how they fit together"
        )
    return {n: shards[0] for n in _shard_names(path, shards[0])}


def open_checkpoint(path: PathLike) -> Checkpoint:
    """Opens an HF checkpoint directory; raises CheckpointError saying what is
    wrong when it cannot be converted."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory" + ("" if path.exists() else " (it does not exist)"))
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    config = _read_json(path / "config.json")
    return Checkpoint(path, config, LazyTensors(_tensor_locations(path)))
