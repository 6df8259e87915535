"""Turning integer codes into id strings without a Python loop per row.

Ids are built as fixed-width byte matrices in numpy and handed to Arrow as string
buffers; pandas then holds them as its Arrow-backed ``str`` dtype without copying.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fraudstream.simulator.rows import IntArray

_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
TOKEN_BITS = 40
_MASK = np.uint64((1 << TOKEN_BITS) - 1)


def fixed_width(prefix: str, values: IntArray, width: int, base: int = 10) -> pa.StringArray:
    """``prefix`` followed by ``values`` zero-padded to ``width`` digits in ``base``."""
    v = values.astype(np.uint64)
    if v.shape[0] and int(v.max()) >= base**width:
        raise ValueError(f"{int(v.max())} does not fit in {width} base-{base} digits")
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    stride = head.shape[0] + width
    buf = np.empty((v.shape[0], stride), dtype=np.uint8)
    buf[:, : head.shape[0]] = head
    # One vector operation per digit, least significant first; hex by shifting.
    for column in range(stride - 1, head.shape[0] - 1, -1):
        if base == 16:
            buf[:, column] = _DIGITS[v & np.uint64(15)]
            v = v >> np.uint64(4)
        else:
            v, digit = np.divmod(v, np.uint64(base))
            buf[:, column] = _DIGITS[digit]
    offsets = np.arange(v.shape[0] + 1, dtype=np.int32) * stride
    return pa.StringArray.from_buffers(v.shape[0], pa.py_buffer(offsets), pa.py_buffer(buf))


def utc_times(ns: IntArray) -> pd.DatetimeIndex:
    """Nanoseconds since the epoch as ``datetime64[ns, UTC]`` (no per-element parsing)."""
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).view("datetime64[ns]"), tz="UTC")


def digits_for(count: int, minimum: int = 6) -> int:
    return max(minimum, len(str(max(count - 1, 0))))


def scrambled(values: IntArray, key: int) -> npt.NDArray[np.uint64]:
    """A keyed bijection of [0, 2**40): unique, random-looking, order-hiding tokens."""
    with np.errstate(over="ignore"):
        x = values.astype(np.uint64) & _MASK
        x = (x * np.uint64(0x9E3779B97F)) & _MASK
        x ^= x >> np.uint64(19)
        x = (x * np.uint64(0xC2B2AE3D27)) & _MASK
        x ^= np.uint64(key) & _MASK
    return x


def tokens(prefix: str, count: int, key: int) -> pa.StringArray:
    """``count`` distinct opaque ids, e.g. ``card_3f9a0c12de``."""
    if count > 1 << TOKEN_BITS:
        raise ValueError(f"at most 2**{TOKEN_BITS} tokens")
    return fixed_width(
        prefix, scrambled(np.arange(count, dtype=np.int64), key).astype(np.int64), 10, 16
    )


def ipv4(values: npt.NDArray[np.uint32]) -> pa.StringArray:
    v = values.astype(np.int64)
    parts = [pc.cast(pa.array((v >> shift) & 255), pa.string()) for shift in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*parts, ".")


def labels(names: tuple[str, ...]) -> pa.StringArray:
    return pa.array(list(names), type=pa.string())


def take(table: pa.Array, codes: IntArray) -> pd.Series:
    """``table[codes]`` as a pandas ``str`` column; negative codes become missing."""
    missing = codes < 0
    index = pa.array(np.where(missing, 0, codes), mask=missing if missing.any() else None)
    return table.take(index).to_pandas()
