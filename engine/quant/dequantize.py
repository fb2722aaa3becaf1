"""An F16 reference of a quantized file, for when the original weights are not here.

Every quantized 2-D tensor is expanded with the ``gguf`` package's dequantizers and
stored as F16; F32 and F16 tensors are copied as they are. All metadata is kept, with
``general.file_type`` set to F16 and ``kvchat.dequantized_from`` naming the source's
quant. What a quant of this file loses is then measured against *this file*: the
rounding the source already went through is in the reference too, and no measurement
made from it says anything about the original training weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, Keys
from gguf.quants import dequantize

from engine.model.gguf_header import GGUFHeader
from engine.model.quant_costs import DEQUANTIZED_FROM, quant_name
from engine.quant.quantize import check_disk, output_name

Q = GGMLQuantizationType
KEEP = (Q.F32, Q.F16)
F16_FILE_TYPE = 1


def reference_name(header: GGUFHeader) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct-F16-from-Q4_1.gguf``."""
    return output_name(header, "F16").removesuffix(".gguf") + f"-from-{quant_name(header)}.gguf"


def predicted_f16_bytes(header: GGUFHeader) -> int:
    total = header.data_offset
    for t in header.tensors:
        n = 1
        for d in t.shape:
            n *= d
        total += -(-(n * 2 if Q(t.ggml_type) not in KEEP else t.n_bytes) // 32) * 32
    return total


def write_f16_reference(header: GGUFHeader, out: Path,
                        progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write the F16 reference of ``header``'s file to ``out`` (through a temporary
    name, renamed at the end; removed on any failure or interruption)."""
    check_disk(out.parent, predicted_f16_bytes(header), header.file_bytes * 4)
    reader = GGUFReader(header.path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        _write(reader, tmp, quant_name(header), progress)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out


def _write(reader: GGUFReader, tmp: Path, source_quant: str,
           progress: Callable[[int, int, str], None] | None) -> None:
    arch = str(reader.fields[Keys.General.ARCHITECTURE].contents())
    writer = GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        # Virtual fields and the ones GGUFWriter writes itself.
        if field.name in (Keys.General.ARCHITECTURE, Keys.General.FILE_TYPE,
                          Keys.General.ALIGNMENT, DEQUANTIZED_FROM) \
                or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    writer.add_file_type(F16_FILE_TYPE)
    writer.add_string(DEQUANTIZED_FROM, source_quant)
    for t in reader.tensors:
        kept = Q(t.tensor_type) in KEEP
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order: rows last
        nbytes = int(t.n_bytes) if kept else int(np.prod(shape)) * 2
        writer.add_tensor_info(t.name, shape, np.dtype(np.float32 if t.tensor_type == Q.F32
                                                       else np.float16), nbytes,
                               raw_dtype=Q(t.tensor_type) if kept else Q.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, t in enumerate(reader.tensors):
        if Q(t.tensor_type) in KEEP:
            data = np.asarray(t.data)
        else:
            data = dequantize(t.data, Q(t.tensor_type)).astype(np.float16)
        writer.write_tensor_data(data)
        if progress is not None:
            progress(i + 1, len(reader.tensors), t.name)
    writer.close()
