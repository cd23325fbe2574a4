"""Which prompt format a local model speaks (DTG or TIPO), read from the model itself.

A registry model's family is in the registry; a local .gguf file or transformers folder
says it through its vocabulary. TIPO added one token per operation (`<|short_to_tag|>`,
`<|tag_to_long|>`, ...), DanTagGen added `<|input_end|>`, which ends its prompt; a GGUF's
`general.name` is the fallback. Nothing here raises on a damaged model: it answers None
("cannot tell") and leaves the one clear error to validation.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .common import DTG_FAMILY, GGUF_KIND, TIPO_FAMILY, ModelError
from .validation import _GGUFReader, _skip_gguf_value

log = logging.getLogger("dtg")

# TIPO's operation tokens (dtg_lib.tipo_format.OPERATIONS, written out so that reading a
# model's family does not import the format layer).
TIPO_MARKERS = frozenset(
    f"<|{operation}|>"
    for operation in (
        "short_to_tag",
        "short_to_tag_to_long",
        "tag_to_long",
        "tag_to_long_to_short",
        "tag_to_short",
        "tag_to_short_to_long",
        "long_to_tag",
    )
)
DTG_MARKERS = frozenset({"<|input_end|>"})

_GGUF_STRING = 8
_GGUF_ARRAY = 9
# Tokenizer files above this size are not read (a real one is a few MB).
_MAX_JSON_BYTES = 64 * 1024 * 1024
# The token list is read in one piece; a vocabulary of 32k short pieces is ~0.5 MB.
_MAX_TOKEN_BYTES = 64 * 1024 * 1024


def detect_family(path: Path, kind: str) -> str | None:
    """ "dtg" or "tipo" as the model at `path` shows it, or None when it cannot tell."""
    try:
        if kind == GGUF_KIND:
            return _gguf_family(Path(path))
        return _hf_family(Path(path))
    except (OSError, ValueError, ModelError, struct.error) as exc:
        # A damaged file: validation names the damage when the model is resolved.
        log.debug("cannot read the model family of %s: %s", path, exc)
        return None


def family_from_tokens(tokens: Iterable[str]) -> str | None:
    """The family whose special tokens appear among `tokens`; TIPO's win (a TIPO
    vocabulary could keep DTG's tokens, not the other way round)."""
    found = set(tokens)
    if found & TIPO_MARKERS:
        return TIPO_FAMILY
    if found & DTG_MARKERS:
        return DTG_FAMILY
    return None


def family_from_name(name: str) -> str | None:
    text = name.lower()
    if "tipo" in text:
        return TIPO_FAMILY
    if "dantaggen" in text or "dtg" in text:
        return DTG_FAMILY
    return None


# ---------------------------------------------------------------- GGUF


def _gguf_family(path: Path) -> str | None:
    name, tokens = read_gguf_identity(path)
    return family_from_tokens(tokens) or family_from_name(name)


def read_gguf_identity(path: Path) -> tuple[str, list[str]]:
    """`general.name` and the special-looking tokens (`<|...|>`) of a GGUF file."""
    with path.open("rb") as handle:
        reader = _GGUFReader(handle, path, os.fstat(handle.fileno()).st_size)
        if handle.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        if reader.u32() not in (2, 3):  # version 1 used 32-bit counts; validation refuses it
            raise ValueError("unsupported GGUF version")
        reader.u64()  # tensor count
        kv_count = reader.u64()
        name, tokens = "", None
        for _ in range(kv_count):
            key = reader.string()
            value_type = reader.u32()
            if key == b"general.name" and value_type == _GGUF_STRING:
                name = reader.string().decode("utf-8", "replace")
            elif key == b"tokenizer.ggml.tokens" and value_type == _GGUF_ARRAY:
                tokens = _special_tokens(reader)
            else:
                _skip_gguf_value(reader, value_type)
            if name and tokens is not None:
                break
    return name, tokens or []


def _special_tokens(reader: _GGUFReader) -> list[str]:
    """The `<|...|>` pieces of a GGUF token list, parsed from one read of the list."""
    item_type = reader.u32()
    count = reader.count()
    if item_type != _GGUF_STRING:
        raise ValueError("the token list does not hold strings")
    start = reader.tell()
    blob = reader.handle.read(min(reader.size - start, _MAX_TOKEN_BYTES))
    special, offset = [], 0
    for _ in range(count):
        (length,) = struct.unpack_from("<Q", blob, offset)
        piece = blob[offset + 8 : offset + 8 + length]
        if len(piece) != length:
            raise ValueError("the token list is cut short")
        offset += 8 + length
        if piece.startswith(b"<|") and piece.endswith(b"|>"):
            special.append(piece.decode("utf-8", "replace"))
    reader.handle.seek(start + offset)
    return special


# ---------------------------------------------------------------- transformers folder


def _hf_family(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    # The small files first; tokenizer.json (megabytes) only when they say nothing.
    for reader in (_tokenizer_config_tokens, _special_map_tokens, _added_tokens_file):
        family = family_from_tokens(reader(folder))
        if family is not None:
            return family
    return family_from_tokens(_tokenizer_json_tokens(folder))


def _read_json(path: Path) -> Any:
    if not path.is_file() or path.stat().st_size > _MAX_JSON_BYTES:
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _contents(items: Any) -> list[str]:
    """Token texts from a list of strings or of {"content": ...} records."""
    if not isinstance(items, list):
        return []
    texts = [item.get("content") if isinstance(item, dict) else item for item in items]
    return [text for text in texts if isinstance(text, str)]


def _tokenizer_config_tokens(folder: Path) -> list[str]:
    config = _read_json(folder / "tokenizer_config.json")
    if not isinstance(config, dict):
        return []
    decoder = config.get("added_tokens_decoder")
    records = list(decoder.values()) if isinstance(decoder, dict) else []
    return _contents(records) + _contents(config.get("additional_special_tokens"))


def _special_map_tokens(folder: Path) -> list[str]:
    special = _read_json(folder / "special_tokens_map.json")
    return _contents(special.get("additional_special_tokens")) if isinstance(special, dict) else []


def _added_tokens_file(folder: Path) -> list[str]:
    added = _read_json(folder / "added_tokens.json")
    return [key for key in added if isinstance(key, str)] if isinstance(added, dict) else []


def _tokenizer_json_tokens(folder: Path) -> list[str]:
    tokenizer = _read_json(folder / "tokenizer.json")
    return _contents(tokenizer.get("added_tokens")) if isinstance(tokenizer, dict) else []
