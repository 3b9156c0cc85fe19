"""Loading logits files: the torch-free fast path, torch's safe fallback, and every kind of bad file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logitsdump.errors import FileFormatError, UserError
from logitsdump.tensorio import ReadBuffer, _load_pth_direct, load_logits


class _Evil:
    """Pickles to a call that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 37), (37,)])
def test_round_trip_without_torch_load(tmp_path: Path, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = (torch.randn(shape) * 10).to(dtype)
    path = tmp_path / "logits_x_1_0.pth"
    torch.save(tensor, path)
    assert _load_pth_direct(np.fromfile(path, dtype=np.uint8)) is not None  # the fast path took it
    expected = tensor.reshape(-1).float().numpy() if dtype == torch.bfloat16 else tensor.reshape(-1).numpy()
    loaded = load_logits(path)
    assert loaded.dtype == expected.dtype and np.array_equal(loaded, expected)
    assert np.array_equal(load_logits(path, buffer=ReadBuffer()), expected)


def test_views_with_offset_and_strides(tmp_path: Path) -> None:
    base = torch.randn(3, 40)
    torch.save(base[1:2], tmp_path / "a.pth")  # the whole storage is saved, with an offset
    assert np.array_equal(load_logits(tmp_path / "a.pth"), base[1].numpy())
    torch.save(base.t()[0:1], tmp_path / "b.pth")  # not contiguous: torch.load fallback
    assert np.array_equal(load_logits(tmp_path / "b.pth"), base[:, 0].numpy())


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensor = torch.randn(1, 20)
    save_file({"logits": tensor}, tmp_path / "a.safetensors")
    assert np.array_equal(load_logits(tmp_path / "a.safetensors"), tensor[0].numpy())
    save_file({"logits": tensor.bfloat16()}, tmp_path / "b.safetensors")
    assert np.array_equal(load_logits(tmp_path / "b.safetensors"), tensor[0].bfloat16().float().numpy())
    save_file({"a": tensor, "b": tensor.clone()}, tmp_path / "c.safetensors")
    save_file({"a": torch.arange(3)}, tmp_path / "d.safetensors")
    with pytest.raises(FileFormatError, match="floating"):
        load_logits(tmp_path / "d.safetensors")
    (tmp_path / "e.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(FileFormatError):
        load_logits(tmp_path / "e.safetensors")
    with pytest.raises(FileFormatError, match="exactly one tensor"):
        load_logits(tmp_path / "c.safetensors")


def _bad_files(folder: Path) -> dict[str, Path]:
    good = folder / "good.pth"
    torch.save(torch.randn(1, 64), good)
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "zero": b"",
        "text": b"hello",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pth"
        paths[name].write_bytes(content)
    for name, obj in {
        "dict": {"logits": torch.randn(1, 4)},
        "int": torch.arange(8).reshape(1, 8),
        "two_rows": torch.randn(2, 8),
        "scalar": torch.tensor(1.0),
        "empty": torch.zeros(1, 0),
    }.items():
        paths[name] = folder / f"{name}.pth"
        torch.save(obj, paths[name])
    paths["loop"] = folder / "loop.pth"
    os.symlink(paths["loop"], paths["loop"])
    paths["dir"] = folder / "dir.pth"
    paths["dir"].mkdir()
    paths["missing"] = folder / "missing.pth"
    return paths


def test_every_bad_file_is_a_file_format_error(tmp_path: Path) -> None:
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(FileFormatError) as info:
            load_logits(path)
        message = str(info.value)
        assert "\n" not in message and len(message) < 400, name


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    with pytest.raises(FileFormatError, match="regular file"):
        load_logits(fifo)


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    zipped, raw = tmp_path / "zipped.pth", tmp_path / "raw.pth"
    torch.save(_Evil(marker), zipped)  # a torch zip archive whose data.pkl calls os.system
    raw.write_bytes(pickle.dumps(_Evil(marker)))  # a bare pickle (legacy format)
    for path in (zipped, raw):
        with pytest.raises(FileFormatError):
            load_logits(path)
    assert not marker.exists()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2000))
def test_arbitrary_bytes_only_raise_user_errors(tmp_path_factory, blob: bytes, cut: int) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    good = folder / "good.pth"
    torch.save(torch.randn(1, 16), good)
    data = good.read_bytes()
    header = b'{"x":{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]}}'
    safetensors = len(header).to_bytes(8, "little") + header + bytes(16)
    for suffix, base in ((".pth", data), (".safetensors", safetensors)):
        for content in (blob, base[:cut] + blob, base[:cut] + blob + base[cut + len(blob):]):
            path = folder / f"x{suffix}"
            path.write_bytes(content)
            try:
                array = load_logits(path)
            except UserError:
                continue
            assert array.ndim == 1 and array.dtype.kind == "f"
