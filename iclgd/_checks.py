"""Input checks shared by every module.

Each helper raises ``ValueError`` whose message says what was expected and what was given,
so that a wrong call fails at the boundary of the library and not deep inside a matmul.
"""
from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = ("float32", "float64")


def _int_at_least(name: str, value: object, minimum: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a {kind} integer; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be a {kind} integer (>= {minimum}); got {value}")
    return int(value)


def positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    return _int_at_least(name, value, 1, "positive")


def nonnegative_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 0."""
    return _int_at_least(name, value, 0, "non-negative")


def finite_float(name: str, value: object, *, positive: bool = False, nonnegative: bool = False) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number (of the right sign)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return value


def float_dtype(name: str, value: object) -> np.dtype:
    """Return the NumPy dtype for "float32" / "float64" (or the dtype objects), else raise."""
    try:
        dtype = None if value is None else np.dtype(value)  # np.dtype(None) would be float64
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be one of {FLOAT_DTYPES}; got {value!r}")
    return dtype


def finite_array(name: str, value: object, *, ndim: int | None = None) -> np.ndarray:
    """Return ``value`` as a NumPy array of real numbers, or raise if it has the wrong rank,
    is not numeric, or holds NaN / inf (the message counts them)."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real-valued array; got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array; got shape {array.shape}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise ValueError(
                f"{name} must hold only finite values; got {int(bad.sum())} NaN/inf entries "
                f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])})"
            )
    return array
