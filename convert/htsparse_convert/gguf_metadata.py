"""A GGUF copied with new metadata: every key of the source but those under
`replace_prefix`, then the given keys; tensors copied byte for byte. The
runtime's calibration writes its htsparse.* keys this way."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Union

import gguf

from .atomic import atomic_path
from .text_gguf import add_metadata_value

PathLike = Union[str, "os.PathLike[str]"]


def write_gguf_with_metadata(
    src: PathLike, dst: PathLike, metadata: Dict[str, Any], replace_prefix: str = "htsparse."
) -> List[str]:
    """A copy of `src` with `metadata` added; every key of `src` under
    `replace_prefix` is dropped first. `dst` appears only once complete.
    Returns the keys dropped."""
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    replaced = []
    with atomic_path(dst) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch, endianess=reader.endianess)
        writer.data_alignment = reader.alignment
        try:
            for fld in reader.fields.values():
                if fld.name == gguf.Keys.General.ARCHITECTURE or fld.name.startswith("GGUF."):
                    continue  # the writer writes these itself
                if fld.name.startswith(replace_prefix):
                    replaced.append(fld.name)
                    continue
                val_type = fld.types[0]
                sub_type = fld.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(fld.name, fld.contents(), val_type, sub_type=sub_type)
            for key, value in metadata.items():
                add_metadata_value(writer, key, value)
            for t in reader.tensors:
                writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in reader.tensors:
                writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        finally:
            writer.close()
    return replaced
