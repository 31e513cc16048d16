"""stacking.stack and stack_into give np.stack's array: values, dtype, shape."""

from __future__ import annotations

import numpy as np
import pytest

from launchpad.replay import stacking

ROWS = 7
rng = np.random.default_rng(0)
CASES = {
  "frames": [rng.integers(0, 255, (8, 8, 4), dtype=np.uint8) for _ in range(ROWS)],
  "vectors": [rng.normal(size=4).astype(np.float32) for _ in range(ROWS)],
  "scalars": [np.asarray(np.float32(i)) for i in range(ROWS)],
  "strings": [np.asarray(f"s{i}") for i in range(ROWS)],
  "byte_swapped": [rng.normal(size=3).astype(">f4") for _ in range(ROWS)],
  "strided": [rng.normal(size=(3, 6))[:, ::2] for _ in range(ROWS)],
  "fortran": [np.asfortranarray(rng.normal(size=(3, 2))) for _ in range(ROWS)],
  "empty_rows": [np.zeros((5, 0), np.int64) for _ in range(ROWS)],
  "no_rows_long": [np.zeros((0, 5), np.int64) for _ in range(ROWS)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stack_is_np_stack(case):
  rows = CASES[case]
  expected, got = np.stack(rows), stacking.stack(rows)
  assert got.dtype == expected.dtype and got.shape == expected.shape
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stack_into_fills_out_as_np_stack_would(case):
  rows = CASES[case]
  expected = np.stack(rows)
  for dtype in (rows[0].dtype, expected.dtype):  # as the rows, or in native byte order
    out = np.empty(expected.shape, dtype)
    stacking.stack_into(rows, out)
    np.testing.assert_array_equal(out, expected)


def test_stack_into_refuses_another_dtype():
  out = np.empty((2, 3), np.float32)
  with pytest.raises(TypeError, match="according to the rule 'equiv'"):
    stacking.stack_into([np.ones(3), np.ones(3)], out)
