"""The top-k file format (topkfile.py) and its names (store.py): round trip, and every malformed file refused."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from logitsdump import store
from logitsdump.errors import FileFormatError
from logitsdump.topkfile import FORMAT, TopkStep, read_topk, write_topk


def step(**changes) -> TopkStep:
    base = TopkStep.build([(5, -1.0), (9, -1.5), (2, -3.0), (7, -1.2)], 3, 2, -3.0, "raw_logprobs", 16)
    return TopkStep(**{**base.__dict__, **changes})


def test_build_keeps_the_k_most_probable_and_the_chosen_token():
    built = TopkStep.build([(5, -0.5), (9, -1.5), (2, -3.0), (7, -0.9), (5, -0.1)], 3, 2, None, "raw_logprobs")
    assert built.ids == (5, 7, 9) and built.logprobs == (-0.5, -0.9, -1.5)  # a duplicate keeps the first
    assert built.chosen_id == 2 and built.chosen_logprob == -3.0  # known from the entries, outside the top 3
    assert built.logprob_of(2) == -3.0 and built.logprob_of(11) is None and built.top_id == 5
    unknown = TopkStep.build([(1, -0.2)], 1, 4, None, "raw_logprobs")
    assert math.isnan(unknown.chosen_logprob) and 4 not in unknown.known()


def test_round_trip_is_exact_and_the_file_is_plain_safetensors(tmp_path):
    path = tmp_path / store.topk_file_name("GSM8K.jsonl", 4, 2)
    assert path.name == "topk_GSM8K.jsonl_4_2.safetensors"
    assert store.is_topk_file_name(path.name) and store.parse_logits_file_name(path.name) == (4, 2)
    assert store.parse_logits_subject(path.name) == "GSM8K.jsonl"
    write_topk(path, step())
    assert read_topk(path) == step()
    from safetensors.numpy import load_file

    tensors = load_file(str(path))  # any safetensors reader opens it
    assert tensors["ids"].tolist() == [5, 7, 9] and tensors["chosen_id"].tolist() == [2]


def _write_raw(path, tensors: dict, metadata: dict) -> None:
    header, offset, body = {"__metadata__": metadata}, 0, b""
    for name, array in tensors.items():
        header[name] = {"dtype": {"i": "I64", "f": "F64"}[array.dtype.kind], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        body += array.tobytes()
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


GOOD_META = {"format": FORMAT, "version": "1", "k": "3", "mode": "raw_logprobs", "vocab_size": "16"}


def _tensors(ids=(5, 7, 9), values=(-1.0, -1.2, -1.5), chosen=2, chosen_value=-3.0):
    return {"ids": np.array(ids, dtype="<i8"), "logprobs": np.array(values, dtype="<f8"),
            "chosen_id": np.array([chosen], dtype="<i8"), "chosen_logprob": np.array([chosen_value], dtype="<f8")}


@pytest.mark.parametrize(("tensors", "meta", "reason"), [
    (_tensors(), {**GOOD_META, "format": "other"}, "not a top-k file"),
    (_tensors(), {**GOOD_META, "version": "9"}, "version"),
    (_tensors(), {**GOOD_META, "mode": "raw_logits"}, "logprobs mode"),
    (_tensors(), {**GOOD_META, "k": "two"}, "k must be"),
    (_tensors(), {**GOOD_META, "k": "2"}, "at most k"),
    (_tensors(values=(-1.2, -1.0, -1.5)), GOOD_META, "most probable first"),
    (_tensors(ids=(5, 5, 9)), GOOD_META, "distinct"),
    (_tensors(values=(0.5, -1.2, -1.5)), GOOD_META, "<= 0"),
    (_tensors(values=(-0.1, -0.2, -0.3)), GOOD_META, "sum to"),
    (_tensors(ids=(5, 7, 99)), GOOD_META, "outside the vocabulary"),
    (_tensors(values=(-1.0, math.nan, -1.5)), GOOD_META, "finite"),
    ({k: v for k, v in _tensors().items() if k != "chosen_id"}, GOOD_META, "without chosen_id"),
])
def test_malformed_files_are_refused_with_their_reason(tmp_path, tensors, meta, reason):
    path = tmp_path / "topk_s_1_0.safetensors"
    _write_raw(path, tensors, meta)
    with pytest.raises(FileFormatError, match=reason):
        read_topk(path)


def test_a_pickle_is_never_loaded(tmp_path):
    import pickle

    path = tmp_path / "topk_s_1_0.safetensors"
    path.write_bytes(pickle.dumps({"ids": [1]}))
    with pytest.raises(FileFormatError, match="not a safetensors file"):
        read_topk(path)
