"""Arrow arrays to and from Python and NumPy values, without importing pandas.

pyarrow looks for pandas the first time it converts anything itself: ``pa.array``
(of a list, a range or a NumPy array, typed or not), ``pa.scalar``, ``pa.repeat`` of
a Python value, ``Array.to_numpy``, ``Table.from_pylist``, and a compute function given
a Python value. Looking means importing pandas, which costs a run about 0.2 s of
start-up that it never uses (a run reads a file and writes Parquet; only
``run_frame`` hands back a DataFrame). The functions here build arrays from a builder
or from buffers, and read fixed-width values back through the buffer protocol, so
pyarrow never looks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

__all__ = ["distinct", "from_numpy", "numbers", "scalar", "strings", "to_numpy"]

_DTYPES: dict[pa.DataType, type[np.generic]] = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def strings(values: Iterable[str | None]) -> pa.Array:
    """A ``string`` array of ``values`` (None is null)."""
    builder = pa.lib.StringBuilder()
    builder.append_values(values if isinstance(values, list) else list(values))
    array: pa.Array = builder.finish()
    return array


def from_numpy(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """An ``arrow_type`` array of a 1-d NumPy array (no copy when the dtype matches)."""
    data = np.ascontiguousarray(values, _dtype(arrow_type))
    return pa.Array.from_buffers(arrow_type, len(data), [None, pa.py_buffer(data)])


def numbers(values: Sequence[float | None], arrow_type: pa.DataType) -> pa.Array:
    """A numeric ``arrow_type`` array of ``values`` (None is null).

    Raises:
        OverflowError: an integer does not fit ``arrow_type`` (NumPy's check).
    """
    present = [v is not None for v in values]
    data = np.array([0 if v is None else v for v in values], _dtype(arrow_type))
    if all(present):
        return pa.Array.from_buffers(arrow_type, len(data), [None, pa.py_buffer(data)])
    validity = np.packbits(np.array(present, bool), bitorder="little")
    return pa.Array.from_buffers(
        arrow_type,
        len(data),
        [pa.py_buffer(validity), pa.py_buffer(data)],
        null_count=present.count(False),
    )


def scalar(value: str | float, arrow_type: pa.DataType | None = None) -> pa.Scalar:
    """An Arrow scalar of ``value``, to hand a compute function (a string by default)."""
    if isinstance(value, str) and arrow_type in (None, pa.string()):
        return strings([value])[0]
    if isinstance(value, str) or arrow_type is None:
        raise TypeError(f"a scalar of {value!r} needs a numeric arrow_type, not {arrow_type}")
    return numbers([value], arrow_type)[0]


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of a numeric or boolean array without nulls, as NumPy values.

    Numbers are a read-only view of the array's buffer; booleans (one bit each in
    Arrow) are unpacked into a new array.

    Raises:
        ValueError: the array has nulls, or its type is neither a fixed-width number
            nor boolean.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    boolean = pa.types.is_boolean(array.type)
    dtype = np.bool_ if boolean else _dtype(array.type)
    if array.null_count:
        raise ValueError(f"{array.null_count} nulls in an array asked for as NumPy values")
    data = array.buffers()[1]
    if data is None or not len(array):  # an empty array may have no buffer
        return np.empty(0, dtype)
    if boolean:
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return bits[array.offset : array.offset + len(array)].astype(bool)
    return np.frombuffer(data, dtype, count=len(array), offset=array.offset * dtype().itemsize)


def distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of a 1-d array, sorted: ``np.unique`` without its cost.

    ``np.unique`` checks for a masked array, which imports ``numpy.ma`` (6 ms of a
    run's start-up) the first time; a run has no masked array to check for.
    """
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _dtype(arrow_type: pa.DataType) -> type[np.generic]:
    try:
        return _DTYPES[arrow_type]
    except KeyError:
        raise ValueError(f"not a fixed-width number type: {arrow_type}") from None
