"""A model folder's weights checked against its config.json before anything loads.

transformers builds the model from config.json first (a `vocab_size` of 1e9 allocates a 256 GB embedding)
and reads the weights after; a truncated safetensors file ends in a `SafetensorError` traceback. Here,
from the files' headers only (a few KB read, nothing allocated by size), one line names the file and the
problem:
- config.json: not a regular file, too large, not JSON, not an object, `vocab_size` / `hidden_size` /
  `num_hidden_layers` not a positive integer;
- a `.safetensors` file (every shard of `model.safetensors.index.json`): missing, shorter than its header
  says (cut short), or a header that is not safetensors' (size, JSON, offsets, shapes);
- the weights disagreeing with config.json: the embedding's rows (`vocab_size`) or width (`hidden_size`),
  the number of decoder layers (`num_hidden_layers`).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from logitsdump.errors import ConfigError
from logitsdump.fsutil import CONFIG_MAX_BYTES, open_regular, read_input_text

#: A safetensors header larger than this is refused (real ones are kilobytes to a few MB).
MAX_HEADER_BYTES = 100 << 20
INDEX_NAME = "model.safetensors.index.json"
#: Bytes per element of safetensors' dtypes.
_ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
#: Tensor names of a decoder's input embedding (the vocabulary x hidden size matrix).
_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embed_in)\.weight$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_model_files(folder: Path) -> None:
    """Raise a one-line `ConfigError` for any problem above; return quietly for a consistent folder (or one
    whose weights are not safetensors: nothing to read without loading them)."""
    config = _config(folder / "config.json")
    shapes: dict[str, tuple[int, ...]] = {}
    files = _weight_files(folder)
    for path in files:
        shapes.update(_header_shapes(path))
    if files:
        _agree(config, shapes, folder, files)


def _config(path: Path) -> Mapping[str, Any]:
    text = read_input_text(path, "model config", CONFIG_MAX_BYTES, error=ConfigError)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    text_config = data.get("text_config")
    values = dict(text_config) if isinstance(text_config, dict) else {}
    values.update({k: v for k, v in data.items() if k in ("vocab_size", "hidden_size", "num_hidden_layers")})
    for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
        if name in values and (isinstance(values[name], bool) or not isinstance(values[name], int)
                               or values[name] <= 0):
            raise ConfigError(f"{path}: {name} must be a positive integer, found {str(values[name])[:40]}")
    return values


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files the model loads: the shards its index lists, else `*.safetensors`."""
    index = folder / INDEX_NAME
    if index.exists():
        text = read_input_text(index, "weights index", CONFIG_MAX_BYTES, error=ConfigError)
        try:
            weight_map = json.loads(text).get("weight_map")
        except (ValueError, RecursionError, AttributeError):
            weight_map = None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConfigError(f"{index}: expected a JSON object with a 'weight_map' of tensor -> file names")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name:
                raise ConfigError(f"{index}: shard {name[:60]!r} is not a file name in the model folder")
            if not (folder / name).exists():
                raise ConfigError(f"{index} lists {name}, which is not in {folder}: the model is incomplete")
        return [folder / name for name in names]
    return sorted(folder.glob("*.safetensors"))


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, after checking that the file holds every byte the
    header describes."""
    fd = open_regular(path, "weights file", error=ConfigError)
    with open(fd, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        head = handle.read(8)
        if len(head) < 8:
            raise ConfigError(f"{path}: {size} bytes, too short for a safetensors file (cut short?)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ConfigError(f"{path}: its header claims {header_len} bytes but the file has {size}: not a "
                              "safetensors file, or cut short")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise ConfigError(f"{path}: the safetensors header is not valid JSON (a damaged file)") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: the safetensors header is not a JSON object (a damaged file)")
    data_bytes = size - 8 - header_len
    shapes: dict[str, tuple[int, ...]] = {}
    end_of_data = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape, end = _entry(path, name, entry)
        shapes[name] = shape
        end_of_data = max(end_of_data, end)
    if end_of_data > data_bytes:
        raise ConfigError(f"{path}: cut short: its header describes {end_of_data} bytes of tensor data, the file "
                          f"holds {data_bytes} (was the download or copy interrupted?)")
    return shapes


def _entry(path: Path, name: str, entry: Any) -> tuple[tuple[int, ...], int]:
    """(shape, end offset) of one tensor entry of a header; a one-line error when it is malformed."""
    bad = ConfigError(f"{path}: tensor {name[:60]!r} has a malformed header entry (a damaged file)")
    if not isinstance(entry, dict):
        raise bad
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]
            or dtype not in _ITEM_BYTES):
        raise bad
    if math.prod(shape) * _ITEM_BYTES[dtype] != offsets[1] - offsets[0]:
        raise ConfigError(f"{path}: tensor {name[:60]!r} of shape {shape} ({dtype}) does not fit its "
                          f"{offsets[1] - offsets[0]} bytes (a damaged file)")
    return tuple(shape), offsets[1]


def _agree(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], folder: Path, files: list[Path]) -> None:
    """config.json's sizes against the weights' shapes."""
    where = files[0].name if len(files) == 1 else f"the {len(files)} weight files"
    config_path = folder / "config.json"
    embedding = next(((n, s) for n, s in shapes.items() if _EMBEDDING.search(n) and len(s) == 2), None)
    if embedding is not None:
        name, (rows, width) = embedding
        for key, found, what in (("vocab_size", rows, "rows"), ("hidden_size", width, "columns")):
            stated = config.get(key)
            if isinstance(stated, int) and stated != found:
                raise ConfigError(f"{config_path}: {key} {stated} disagrees with {where} ({name} has {found} "
                                  f"{what}): the config is not this model's; nothing was loaded")
    layers = {int(m.group(1)) for n in shapes for m in [_LAYER.search(n)] if m}
    stated = config.get("num_hidden_layers")
    if layers and isinstance(stated, int) and stated > max(layers) + 1:
        raise ConfigError(f"{config_path}: num_hidden_layers {stated} disagrees with {where} (layers 0 to "
                          f"{max(layers)} only): the missing layers would be random; nothing was loaded")
