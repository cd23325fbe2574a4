"""Checking a model before anyone loads it: GGUF files, safetensors weights and
transformers folders; a damaged file gives one clear line instead of a backend crash."""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO

from .common import (
    GGUF_KIND,
    KINDS,
    PICKLE_SUFFIXES,
    TOKENIZER_FILES,
    ModelCorrupt,
    ModelError,
    ModelNotFound,
    pickle_message,
)

log = logging.getLogger("dtg")

# Expected sizes recorded at download time, so a file truncated later (disk
# full, copy interrupted) is caught even when its header still parses.
SIZES_FILE = ".dtg-sizes.json"

# ---------------------------------------------------------------- validation


def validate_model_file(path: Path, kind: str) -> None:
    """Raise ModelCorrupt unless `path` is a complete GGUF file / transformers folder."""
    path = Path(path)
    if kind not in KINDS:
        raise ModelError(f"Unknown model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if not path.exists():
        raise ModelNotFound(f"Model path {path} does not exist.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelCorrupt(pickle_message(path))
    if kind == GGUF_KIND:
        _validate_gguf(path)
    else:
        _validate_hf_folder(path)


def _check_recorded_size(path: Path) -> None:
    expected = read_sizes(path.parent).get(path.name)
    actual = path.stat().st_size
    if expected is not None and actual != expected:
        raise ModelCorrupt(
            f"{path} has {actual} bytes but was downloaded with {expected}; it is truncated or "
            "was changed. Delete it and run again to download it afresh."
        )


# GGUF metadata value types: fixed-size scalars by type id; 8 string, 9 array.
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING = 8
_GGUF_ARRAY = 9
_GGUF_UINT32 = 4
_GGUF_VERSIONS = (2, 3)
_GGUF_DEFAULT_ALIGNMENT = 32
_GGUF_MAX_DIMS = 8
_GGUF_MAX_NESTING = 4
_GGUF_MAX_COUNT = 10_000_000

# ggml tensor type id -> (elements per block, bytes per block), from ggml's
# type traits; types missing here only skip the exact end-of-data check.
_GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
}


# Why not gguf.GGUFReader (ggml's own reader): measured on a GGUF with DTG's 32k-token
# vocabulary it takes 1.5 s per check against 0.04 s here, and validation runs on every
# request; on damaged files it raises ValueError/IndexError/UnicodeDecodeError with
# messages such as "cannot reshape array of size 67" that cannot tell truncation from
# damage; and it refuses tensor types newer than the installed gguf. This reader only
# skips values and checks bounds, so it stays fast and says what is wrong.
class _GGUFReader:
    """Bounds-checked little-endian reads; running past the end means truncation."""

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle = handle
        self.path = path
        self.size = size
        self.wide = True  # GGUF v2+ uses 64-bit counts and lengths

    def truncated(self, needed: int) -> ModelCorrupt:
        return ModelCorrupt(
            f"{self.path} is truncated: it has {self.size} bytes but its header needs at least "
            f"{needed}. The download was probably interrupted; delete it and download it again."
        )

    def take(self, count: int) -> bytes:
        start = self.handle.tell()
        if start + count > self.size:
            raise self.truncated(start + count)
        return self.handle.read(count)

    def skip(self, count: int) -> None:
        end = self.handle.tell() + count
        if end > self.size:
            raise self.truncated(end)
        self.handle.seek(count, os.SEEK_CUR)

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def count(self) -> int:
        return self.u64() if self.wide else self.u32()

    def string(self) -> bytes:
        return self.take(self.count())

    def skip_string(self) -> None:
        self.skip(self.count())

    def tell(self) -> int:
        return self.handle.tell()


def _validate_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelCorrupt(f"{path} is a folder, not a .gguf file.")
    size = path.stat().st_size
    with path.open("rb") as handle:
        reader = _GGUFReader(handle, path, size)
        magic = handle.read(4)
        if magic != b"GGUF":
            raise ModelCorrupt(_not_gguf_message(path, magic))
        _read_gguf_version(reader)
        needed = _gguf_data_end(reader)
    if size < needed:
        raise ModelCorrupt(
            f"{path} is truncated: it has {size} bytes but its tensors end at byte {needed}. "
            "The download was probably interrupted; delete it and download it again."
        )
    _check_recorded_size(path)


def _not_gguf_message(path: Path, magic: bytes) -> str:
    if not magic:
        return f"{path} is empty; delete it and download the model again."
    hint = ""
    if magic.startswith(b"PK") or magic[:1] == b"\x80":
        hint = " It looks like a pickle/PyTorch checkpoint, which is never loaded."
    elif magic.lstrip()[:1] in (b"<", b"{"):
        hint = " It looks like text (an HTML error page or JSON), not model weights."
    return f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF').{hint}"


def _read_gguf_version(reader: _GGUFReader) -> int:
    version = reader.u32()
    if version not in _GGUF_VERSIONS:
        raise ModelCorrupt(
            f"{reader.path} is GGUF version {version}; only versions "
            f"{', '.join(map(str, _GGUF_VERSIONS))} are supported. "
            "Re-convert it with a current llama.cpp."
        )
    return version


def _gguf_data_end(reader: _GGUFReader) -> int:
    """Parse metadata and tensor infos; return the byte where tensor data must end."""
    tensor_count = reader.u64()
    kv_count = reader.u64()
    if tensor_count > _GGUF_MAX_COUNT or kv_count > _GGUF_MAX_COUNT:
        raise ModelCorrupt(
            f"{reader.path} has an implausible GGUF header ({tensor_count} tensors, "
            f"{kv_count} metadata entries); the file is damaged."
        )
    alignment = _GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = reader.string()
        value_type = reader.u32()
        if key == b"general.alignment" and value_type == _GGUF_UINT32:
            alignment = reader.u32()
        else:
            _skip_gguf_value(reader, value_type)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ModelCorrupt(f"{reader.path} declares an invalid alignment {alignment}.")
    extents = [_gguf_tensor_extent(reader) for _ in range(tensor_count)]
    data_start = -(-reader.tell() // alignment) * alignment
    if not extents:
        return reader.tell()
    return data_start + max(extents)


def _skip_gguf_value(reader: _GGUFReader, value_type: int, depth: int = 0) -> None:
    if value_type in _GGUF_SCALAR_SIZES:
        reader.skip(_GGUF_SCALAR_SIZES[value_type])
    elif value_type == _GGUF_STRING:
        reader.skip_string()
    elif value_type == _GGUF_ARRAY:
        _skip_gguf_array(reader, depth)
    else:
        raise ModelCorrupt(
            f"{reader.path} has an unknown GGUF value type {value_type}; it is damaged."
        )


def _skip_gguf_array(reader: _GGUFReader, depth: int) -> None:
    if depth >= _GGUF_MAX_NESTING:
        raise ModelCorrupt(f"{reader.path} nests GGUF arrays {depth} deep; it is damaged.")
    item_type = reader.u32()
    count = reader.count()
    item_size = _GGUF_SCALAR_SIZES.get(item_type)
    if item_size is not None:
        reader.skip(count * item_size)
        return
    # Strings and arrays take at least 8 bytes each, so a count larger than
    # what is left of the file is a lie; checking first avoids a long loop.
    if count * 8 > reader.size - reader.tell():
        raise reader.truncated(reader.tell() + count * 8)
    for _ in range(count):
        _skip_gguf_value(reader, item_type, depth + 1)


def _gguf_tensor_extent(reader: _GGUFReader) -> int:
    """Read one tensor info; return where its data ends, relative to the data start."""
    reader.skip_string()
    n_dims = reader.u32()
    if n_dims > _GGUF_MAX_DIMS:
        raise ModelCorrupt(f"{reader.path} has a tensor with {n_dims} dimensions; it is damaged.")
    elements = 1
    for _ in range(n_dims):
        elements *= reader.u64()
    tensor_type = reader.u32()
    offset = reader.u64()
    block = _GGML_BLOCKS.get(tensor_type)
    if block is None:
        return offset
    per_block, block_bytes = block
    return offset + elements // per_block * block_bytes


def check_hf_folder(path: Path) -> None:
    """The shape a transformers loader needs: a folder with config.json and safetensors.

    The torch backend runs this cheap check right before loading (a folder can change
    after `validate_model_file` passed it); its errors are this module's, one family.
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"model folder not found: {path}")
    if path.is_file():
        hint = " (a GGUF file: use the llama.cpp backend)" if path.suffix == ".gguf" else ""
        raise ModelCorrupt(
            f"{path} is a file{hint}; the torch backend needs a Hugging Face model folder"
        )
    if not (path / "config.json").is_file():
        raise ModelCorrupt(f"{path} has no config.json; it is not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        raise ModelCorrupt(
            f"{path} has no .safetensors weights; the torch backend loads only safetensors "
            "because pickle (.bin) weights can run code when loaded"
        )


def _validate_hf_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelCorrupt(
            f"{folder} is a file; a transformers model is a folder with config.json."
        )
    _check_hf_config(folder / "config.json")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelCorrupt(
                f"{folder} only has pickle weights ({', '.join(pickles)}); these can run code "
                "when loaded, so they are never loaded. Download the .safetensors weights."
            )
        raise ModelCorrupt(f"{folder} has no .safetensors weights.")
    for weight in weights:
        _validate_safetensors(weight)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelCorrupt(
            f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
            "copy it from the model repo."
        )


def _check_hf_config(config_path: Path) -> None:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelCorrupt(f"{config_path.parent} has no config.json.") from exc
    except (OSError, ValueError) as exc:
        raise ModelCorrupt(
            f"{config_path} is not valid JSON ({exc}); the file is damaged."
        ) from exc
    if not isinstance(config, dict):
        raise ModelCorrupt(f"{config_path} does not hold a JSON object; the file is damaged.")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type.lower() != "llama":
        raise ModelCorrupt(
            f"{config_path} says model_type {model_type!r}; DanTagGen models are 'llama'. "
            "This folder holds some other model."
        )


_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


def _validate_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelCorrupt(f"{path} is too short to be a safetensors file ({size} bytes).")
        header_len = int.from_bytes(prefix, "little")
        if not 2 <= header_len <= _SAFETENSORS_MAX_HEADER:
            raise ModelCorrupt(f"{path} is not a safetensors file (header length {header_len}).")
        if 8 + header_len > size:
            raise ModelCorrupt(
                f"{path} is truncated: its header alone needs {8 + header_len} bytes, "
                f"the file has {size}. Delete it and download it again."
            )
        raw_header = handle.read(header_len)
    data_end = _safetensors_data_end(path, raw_header)
    if 8 + header_len + data_end > size:
        raise ModelCorrupt(
            f"{path} is truncated: its header promises {data_end} bytes of tensor data but only "
            f"{size - 8 - header_len} follow. Delete it and download it again."
        )
    _check_recorded_size(path)


def _safetensors_data_end(path: Path, raw_header: bytes) -> int:
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelCorrupt(f"{path} has a damaged safetensors header ({exc}).") from exc
    if not isinstance(header, dict):
        raise ModelCorrupt(f"{path} has a damaged safetensors header (not a JSON object).")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise ModelCorrupt(f"{path} has a damaged safetensors header (tensor {name!r}).")
        end = max(end, offsets[1])
    return end


# ---------------------------------------------------------------- size records


def read_sizes(folder: Path) -> dict[str, int]:
    try:
        data = json.loads((folder / SIZES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}


def record_size(folder: Path, filename: str, size: int | None) -> None:
    sizes = read_sizes(folder)
    if size is None:
        if sizes.pop(filename, None) is None:
            return
    else:
        sizes[filename] = size
    partial = folder / (SIZES_FILE + ".tmp")
    try:
        partial.write_text(json.dumps(sizes, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(partial, folder / SIZES_FILE)
    except OSError as exc:
        log.warning("Could not record download sizes in %s: %s", folder, exc)
