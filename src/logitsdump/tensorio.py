"""Load one logits file, safely, as a 1-D numpy array.

`.pth` files are read without torch when they are plain `torch.save` archives
of one contiguous float tensor: a restricted unpickler accepts only the
tensor-rebuild globals (nothing can run), and the storage record is read with
`numpy.frombuffer`. Anything else falls back to
`torch.load(weights_only=True)` (torch's own restricted unpickler); pickles are
never loaded unrestricted and the user is never prompted (msit bug 5.5).
`.safetensors` files (parsed directly, bf16 included) must hold exactly one tensor.

The storage bytes are read straight into the result (or a reusable
`ReadBuffer`), with no intermediate copy. A leading dimension of 1 is
squeezed (`[1, V]` and `[V]` are equal). Every failure is a
`FileFormatError` with a short reason.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from logitsdump.errors import FileFormatError
from logitsdump.store import LOGITS_SUFFIX, SAFETENSORS_SUFFIX

#: Suffixes of the logits files we read.
TENSOR_SUFFIXES = (LOGITS_SUFFIX, SAFETENSORS_SUFFIX)

#: torch storage class name -> numpy dtype of its bytes (bf16 is read as uint16, then upcast).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "DoubleStorage": np.dtype("<f8"),
    "BFloat16Storage": np.dtype("<u2"),
}
_BF16 = "BFloat16Storage"


class ReadBuffer:
    """A reusable byte buffer for `load_logits` (one per thread): no allocation per file.

    An array returned with a buffer is a view of it, valid until the next load
    with the same buffer.
    """

    def __init__(self) -> None:
        self._data = np.empty(0, dtype=np.uint8)

    def get(self, size: int) -> np.ndarray:
        if self._data.size < size:
            self._data = np.empty(size, dtype=np.uint8)
        return self._data[:size]


def load_logits(path: str | os.PathLike[str], *, buffer: ReadBuffer | None = None) -> np.ndarray:
    """The logits in `path` as a 1-D float array (float16/32/64; bf16 becomes float32).

    Raises FileFormatError (one short reason) for anything that is not one
    floating tensor of shape `[V]` or `[1, V]`. With `buffer`, the result may
    be a view of it (see ReadBuffer).
    """
    file = Path(path)
    try:
        is_safetensors = file.name.endswith(SAFETENSORS_SUFFIX)
        array = _load_safetensors(file) if is_safetensors else _load_pth(file, buffer)
    except FileFormatError:
        raise
    except RecursionError as err:
        raise FileFormatError(f"{file.name}: nested too deeply") from err
    except OSError as err:
        raise FileFormatError(f"{file.name}: cannot read ({err.strerror or err})") from err
    return _as_vector(array, file.name)


def _as_vector(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim >= 1 and array.shape[0] == 1 and array.ndim > 1:
        array = array[0]
    if array.ndim != 1:
        raise FileFormatError(f"{name}: expected shape [V] or [1, V], found {list(array.shape)}")
    if array.dtype.kind != "f":
        raise FileFormatError(f"{name}: expected a floating tensor, found {array.dtype}")
    if array.size == 0:
        raise FileFormatError(f"{name}: empty tensor")
    return array


# ---- .pth -------------------------------------------------------------------------------------


def _load_pth(file: Path, buffer: ReadBuffer | None) -> np.ndarray:
    raw = _read_into(file, buffer)
    fast = _load_pth_direct(raw)
    if fast is not None:
        return fast
    data = raw.tobytes()  # the careful paths work on a copy: `raw` may be a reused buffer
    handle = io.BytesIO(data)
    if not zipfile.is_zipfile(handle):
        raise FileFormatError(f"{file.name}: not a torch zip archive (legacy, damaged or truncated file)")
    try:
        with zipfile.ZipFile(handle) as archive:
            fast = _load_pth_fast(archive, handle, None)
    except Exception as err:  # zipfile raises many types on hostile input
        raise FileFormatError(f"{file.name}: damaged archive ({type(err).__name__}: {err})") from err
    if fast is not None:
        return fast
    return _load_pth_torch(data, file.name)


def _read_into(file: Path, buffer: ReadBuffer | None) -> np.ndarray:
    """The whole file, read with one open/fstat/read into `buffer` (or a new array).

    Opened non-blocking so that a FIFO cannot hang the run; only regular files are read.
    """
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileFormatError(f"{file.name}: not a regular file")
        size = info.st_size
        if size == 0:
            raise FileFormatError(f"{file.name}: empty file (0 bytes)")
        raw = buffer.get(size) if buffer is not None else np.empty(size, dtype=np.uint8)
        view, done = memoryview(raw), 0
        while done < size:
            count = os.readv(fd, [view[done:]])
            if count == 0:
                raise FileFormatError(f"{file.name}: file changed while being read")
            done += count
        return raw
    finally:
        os.close(fd)


def _load_pth_direct(raw: np.ndarray) -> np.ndarray | None:
    """The common case without zipfile's overhead: a plain archive as torch writes it, already in memory.

    Reads the central directory with struct; anything unexpected (zip64, a
    comment, compression, odd offsets) returns None and the careful path decides.
    """
    data = memoryview(raw)
    entries = _zip_entries(data)
    if entries is None:
        return None
    pickles = [n for n in entries if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        return None
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in entries and bytes(_member(data, entries[f"{prefix}byteorder"])) != b"little":
        return None
    obj = _unpickle_tensor(bytes(_member(data, entries[pickles[0]])))
    if obj is None:
        return None
    size, offset, storage = obj
    record = entries.get(f"{prefix}data/{storage.key}")
    if record is None:
        return None
    dtype = _STORAGE_DTYPES[storage.kind]
    body = _member(data, record)
    count = int(np.prod(size, dtype=np.int64))
    if len(body) != storage.numel * dtype.itemsize or offset + count > storage.numel:
        return None
    start = record[0] + offset * dtype.itemsize
    flat = raw[start : start + count * dtype.itemsize].view(dtype)
    if storage.kind == _BF16:
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return flat.reshape(size)


#: name -> (data offset, size) of a stored (uncompressed) zip member.
_Entries = dict[str, tuple[int, int]]


#: A zip central directory header (46 bytes): signature, method, packed and unpacked sizes, name,
#: extra and comment lengths, local header offset. And a local header (30 bytes): signature, name
#: and extra lengths.
_CENTRAL_HEADER = struct.Struct("<4s6xH8xIIHHH8xI")
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def _zip_entries(data: memoryview) -> _Entries | None:
    end = len(data) - 22
    if end < 0 or data[end : end + 4] != b"PK\x05\x06":
        return None  # a comment or zip64 record: let zipfile handle it
    count, dir_size, dir_offset = struct.unpack_from("<HII", data, end + 10)
    if dir_offset + dir_size > end or count == 0xFFFF:
        return None
    entries: _Entries = {}
    pos = dir_offset
    for _ in range(count):
        if pos + 46 > end:
            return None
        magic, method, packed, unpacked, name_len, extra_len, comment_len, local = _CENTRAL_HEADER.unpack_from(
            data, pos
        )
        if magic != b"PK\x01\x02":
            return None
        name = bytes(data[pos + 46 : pos + 46 + name_len]).decode("utf-8", "replace")
        pos += 46 + name_len + extra_len + comment_len
        if method != zipfile.ZIP_STORED or packed != unpacked or local + 30 > end:
            return None
        local_magic, local_name, local_extra = _LOCAL_HEADER.unpack_from(data, local)
        if local_magic != b"PK\x03\x04":
            return None
        start = local + 30 + local_name + local_extra
        if start + packed > end:
            return None
        entries[name] = (start, packed)
    return entries


def _member(data: memoryview, entry: tuple[int, int]) -> memoryview:
    return data[entry[0] : entry[0] + entry[1]]


@functools.lru_cache(maxsize=64)
def _unpickle_tensor(payload: bytes) -> tuple[tuple[int, ...], int, _Storage] | None:
    """(size, storage offset, storage) of a plain contiguous tensor pickle, else None.

    Cached by payload: files of one shape and dtype carry the same pickle, and the
    result depends on the bytes alone (the `_Storage` is never changed).
    """
    try:
        obj = _TensorUnpickler(io.BytesIO(payload)).load()
    except _Fallback:
        return None
    except (
        pickle.UnpicklingError, TypeError, AttributeError, IndexError, ValueError, EOFError, KeyError,
        OverflowError, MemoryError,
    ):
        return None
    if not isinstance(obj, _Rebuilt) or not isinstance(obj.storage, _Storage):
        return None
    size, stride, offset = obj.size, obj.stride, obj.offset
    if not (_int_tuple(size) and _int_tuple(stride) and isinstance(offset, int)):
        return None
    if len(size) != len(stride) or tuple(stride) != _contiguous_strides(size) or offset < 0:
        return None
    return size, offset, obj.storage


def _check_regular(file: Path) -> None:
    """A FIFO or device would block or never end: only regular files (symlinks followed) are read."""
    try:
        mode = file.stat().st_mode
    except OSError as err:
        raise FileFormatError(f"{file.name}: cannot read ({err.strerror or err})") from err
    if not stat.S_ISREG(mode):
        raise FileFormatError(f"{file.name}: not a regular file")


def _read_bytes(file: Path) -> bytes:
    _check_regular(file)
    data = file.read_bytes()
    if not data:
        raise FileFormatError(f"{file.name}: empty file (0 bytes)")
    return data


@dataclass(frozen=True)
class _Storage:
    """What a persistent id names: a storage record of the archive."""

    kind: str
    key: str
    numel: int


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _Rebuilt:
    """A tensor as the pickle describes it; no data is touched while unpickling."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Fallback(Exception):
    """The fast path does not handle this archive: use torch.load(weights_only=True)."""


class _TensorUnpickler(pickle.Unpickler):
    """Allows only the globals of one plain tensor; everything else -> torch's fallback."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _Rebuilt
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Fallback(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if (
            not isinstance(pid, tuple)
            or len(pid) != 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or not isinstance(pid[4], int)
        ):
            raise _Fallback("storage id")
        return _Storage(pid[1].name, pid[2], pid[4])


def _load_pth_fast(
    archive: zipfile.ZipFile, handle: BinaryIO, buffer: ReadBuffer | None
) -> np.ndarray | None:
    """Read a plain, contiguous, little-endian float tensor; None when torch must decide."""
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl")]
    if len(pickles) != 1:
        return None
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
        return None
    parsed = _unpickle_tensor(archive.read(pickles[0]))
    if parsed is None:
        return None
    size, offset, storage = parsed
    info = archive.getinfo(f"{prefix}data/{storage.key}")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    dtype = _STORAGE_DTYPES[storage.kind]
    if info.file_size != storage.numel * dtype.itemsize:
        raise ValueError("storage record has the wrong length")
    count = int(np.prod(size, dtype=np.int64))
    if offset + count > storage.numel:
        raise ValueError("tensor runs past its storage")
    nbytes = count * dtype.itemsize
    target = buffer.get(nbytes) if buffer is not None else np.empty(nbytes, dtype=np.uint8)
    handle.seek(_data_start(handle, info) + offset * dtype.itemsize)
    if handle.readinto(memoryview(target)) != nbytes:
        raise ValueError("storage record is cut short")
    flat = target.view(dtype)
    if storage.kind == _BF16:
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return flat.reshape(tuple(size))


def _data_start(handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local header (name and extra field)."""
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError("bad local file header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def _load_pth_torch(data: bytes, name: str) -> np.ndarray:
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad or unsafe archives
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileFormatError(f"{name}: not a plain tensor file ({reason[:200]})") from err
    if not isinstance(obj, torch.Tensor):
        raise FileFormatError(f"{name}: expected one tensor, found {type(obj).__name__}")
    if not obj.is_floating_point():
        raise FileFormatError(f"{name}: expected a floating tensor, found {obj.dtype}")
    tensor = obj.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    if tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.double()
    return tensor.contiguous().numpy()


# ---- .safetensors -----------------------------------------------------------------------------


#: safetensors dtype -> numpy dtype of its bytes (BF16 is read as uint16, then upcast to float32).
_SAFETENSORS_DTYPES = {
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
}
_SAFETENSORS_FLOATS = ("F16", "F32", "F64", "BF16")


def _load_safetensors(file: Path) -> np.ndarray:
    """One floating tensor of a safetensors file (see `read_safetensors`)."""
    tensors, _ = read_safetensors(file, floats_only=True)
    if len(tensors) != 1:
        raise FileFormatError(f"{file.name}: expected exactly one tensor, found {len(tensors)}")
    return next(iter(tensors.values()))


def read_safetensors(file: str | os.PathLike[str], *, floats_only: bool = False
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a safetensors file (name -> array) and its `__metadata__`, parsed directly.

    The format is 8 bytes of header length, a JSON header, then the raw data: nothing is unpickled and
    no torch is needed. F16/F32/F64/BF16 (BF16 upcast to float32 exactly) and I32/I64 are read;
    `floats_only` refuses the integer ones. Any malformed part is a `FileFormatError` with its reason.
    """
    path = Path(file)
    data = _read_bytes(path)
    name = path.name
    if len(data) < 8:
        raise FileFormatError(f"{name}: not a safetensors file (too short)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise FileFormatError(f"{name}: not a safetensors file (header runs past the end)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise FileFormatError(f"{name}: not a safetensors file (bad header)") from err
    if not isinstance(header, dict):
        raise FileFormatError(f"{name}: not a safetensors file (bad header)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FileFormatError(f"{name}: not a safetensors file (bad metadata)")
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise FileFormatError(f"{name}: not a safetensors file (bad header)")
        tensors[key] = _safetensors_tensor(info, body, name, floats_only)
    return tensors, dict(metadata)


def _safetensors_tensor(info: dict[str, Any], body: memoryview, name: str, floats_only: bool) -> np.ndarray:
    kind, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    allowed = _SAFETENSORS_FLOATS if floats_only else tuple(_SAFETENSORS_DTYPES)
    if kind not in allowed:
        raise FileFormatError(f"{name}: expected a floating tensor, found {kind}" if floats_only
                              else f"{name}: unsupported tensor dtype {kind}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise FileFormatError(f"{name}: not a safetensors file (bad shape)")
    dtype = _SAFETENSORS_DTYPES[kind]
    count = int(np.prod(shape, dtype=np.int64))
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= len(body)
        and offsets[1] - offsets[0] == count * dtype.itemsize
    ):
        raise FileFormatError(f"{name}: not a safetensors file (bad data offsets)")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=offsets[0])
    if kind == "BF16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return flat.reshape(shape)
