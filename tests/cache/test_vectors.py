"""cache/vectors.py: the stored form of vectors, and keys that never cross scopes or models."""

from __future__ import annotations

import numpy as np
import pytest

from cache.vectors import Vectors, vector_key


def test_vectors_round_trip_exactly() -> None:
    rows = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    back = Vectors.decode(Vectors(17, rows).encode())
    assert back.tokens == 17 and back.rows.dtype == np.float32 and np.array_equal(back.rows, rows)


@pytest.mark.parametrize("blob", [b"", b"\x01\x00", b"\x01\x00\x00\x00\x02\x00\x00\x00" + b"\x00" * 12])
def test_damaged_entries_are_refused(blob: bytes) -> None:
    with pytest.raises(ValueError):
        Vectors.decode(blob)


def test_keys_differ_by_scope_model_and_input() -> None:
    base = vector_key("tenant-a", "onnx:m", "hello")
    assert base == vector_key("tenant-a", "onnx:m", "hello")
    assert len({base, vector_key("tenant-b", "onnx:m", "hello"), vector_key("tenant-a", "onnx:n", "hello"),
                vector_key("tenant-a", "onnx:m", "hello "), vector_key("tenant-a", "onnx:m", ["hello"])}) == 5
