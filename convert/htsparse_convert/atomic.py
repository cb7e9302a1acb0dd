"""Output files that appear only once complete: every writer of the
converter writes to a temporary name beside the target and renames it at the
end, so that a failure or an interrupted run never leaves a half-written
file (and an existing file stays untouched until then)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Union

if TYPE_CHECKING:
    import gguf

PathLike = Union[str, "os.PathLike[str]"]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to: renamed to `path` when the
    block ends normally, removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(path: PathLike, arch: str, fill: Callable[["gguf.GGUFWriter"], None]) -> Path:
    """Writes a GGUF atomically: `fill` adds its keys and tensors to a
    GGUFWriter, then header, keys and tensors are written and the file renamed."""
    import gguf

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            fill(writer)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return Path(path)
