"""Arrow arrays built and read without pyarrow's pandas probe."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from aibatch.jobs.arrays import distinct, from_numpy, numbers, scalar, strings, to_numpy


def test_strings_keep_none_as_null():
    array = strings(["a", None, "é"])

    assert array.type == pa.string()
    assert array.to_pylist() == ["a", None, "é"]


@pytest.mark.parametrize("arrow_type", [pa.int32(), pa.int64(), pa.uint64(), pa.float64()])
def test_numbers_keep_none_as_null_in_the_type_asked_for(arrow_type: pa.DataType):
    array = numbers([1, None, 3, None], arrow_type)

    assert array.type == arrow_type
    assert array.to_pylist() == [1, None, 3, None]
    array.validate(full=True)


def test_an_integer_beyond_the_type_is_refused():
    with pytest.raises(OverflowError):
        numbers([2**63], pa.int64())


def test_from_numpy_gives_the_values_in_the_type_asked_for():
    array = from_numpy(np.arange(5, dtype=np.int32), pa.int64())

    assert array.type == pa.int64()
    assert array.to_pylist() == [0, 1, 2, 3, 4]


def test_to_numpy_reads_a_slice_from_its_offset():
    sliced = numbers(list(range(10)), pa.uint64()).slice(3, 4)

    values = to_numpy(sliced)

    assert values.dtype == np.uint64
    assert values.tolist() == [3, 4, 5, 6]


def test_to_numpy_unpacks_booleans_from_their_offset():
    flags = pc.equal(numbers(list(range(20)), pa.int64()), scalar(11, pa.int64())).slice(9, 4)

    assert to_numpy(flags).tolist() == [False, False, True, False]


def test_to_numpy_joins_the_chunks_of_a_chunked_array():
    chunked = pa.chunked_array([numbers([1, 2], pa.int64()), numbers([3], pa.int64())])

    assert to_numpy(chunked).tolist() == [1, 2, 3]


def test_to_numpy_refuses_an_array_with_nulls():
    with pytest.raises(ValueError, match="1 nulls"):
        to_numpy(numbers([1, None], pa.int64()))


def test_a_scalar_compares_in_a_compute_function():
    status = strings(["ok", "error", None, "ok"])

    assert pc.equal(status, scalar("ok")).to_pylist() == [True, False, None, True]
    assert pc.greater(numbers([1, 5], pa.int32()), scalar(2, pa.int32())).to_pylist() == [
        False,
        True,
    ]


def test_building_and_reading_arrays_imports_no_pandas():
    code = (
        "import sys, numpy as np, pyarrow as pa, pyarrow.compute as pc\n"
        "from aibatch.jobs.arrays import distinct, from_numpy, numbers, scalar, strings, to_numpy\n"
        "s = strings(['ok', None]); n = numbers([1, None], pa.int64())\n"
        "pc.equal(s, scalar('ok')); to_numpy(n.is_valid())\n"
        "to_numpy(from_numpy(np.arange(3), pa.int64()))\n"
        "t = pa.Table.from_arrays([s, n], names=['s', 'n'])\n"
        "t.take(from_numpy(np.arange(1), pa.int64()))\n"
        "print('pandas' in sys.modules)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.stdout.split() == ["False"], done.stderr


@pytest.mark.parametrize(
    "values",
    [[], [7], [3, 1, 3, 2, 1], [5, 5, 5], [2**64 - 1, 0, 2**63, 0]],
    ids=["empty", "one", "repeats", "all-same", "uint64-extremes"],
)
def test_distinct_gives_what_np_unique_gives(values: list[int]):
    array = np.array(values, np.uint64)

    assert distinct(array).tolist() == np.unique(array).tolist()
