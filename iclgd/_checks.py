"""Input checks shared by every module.

Each helper raises ``ValueError`` whose message says what was expected and what was given,
so that a wrong call fails at the boundary of the library and not deep inside a matmul.

Integers are bounded by int64 (``INT64_MAX``): every count and seed ends up in a NumPy shape,
a NumPy integer or a checkpoint, where a larger Python int would overflow (OverflowError, or a
silent wrap-around).  Arrays must be rectangular and real-valued, and floats must fit in the
dtype they are computed in (float64 at most: wider floats are checked against it).
"""
from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = ("float32", "float64")

#: The largest integer a count or a seed may be: it must fit in a NumPy int64.
INT64_MAX = 2**63 - 1

#: No standard draw that iclgd scales exceeds this in magnitude, so ``scale * DRAW_BOUND`` bounds
#: a scaled draw: NumPy's ziggurat normal stays below 13.8 and its exponential below 44.5
#: (tail draws use log1p(-u) with u >= 2**-53), its Laplace below 36.1 (log(2 u), u >= 2**-53),
#: and jax's inverse-CDF draws below that in float64.  Scales are refused when this bound of
#: what they produce overflows the dtype.
DRAW_BOUND = 50.0


def _int_in_range(name: str, value: object, minimum: int, kind: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a {kind} integer; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be a {kind} integer (>= {minimum}); got {value}")
    if value > maximum:
        bound = "2**63 - 1, the largest int64" if maximum == INT64_MAX else str(maximum)
        raise ValueError(f"{name} must be a {kind} integer <= {bound}; got {value}")
    return int(value)


def positive_int(name: str, value: object, maximum: int = INT64_MAX) -> int:
    """Return ``value`` as an int, or raise if it is not an integer in 1..maximum (int64 by default)."""
    return _int_in_range(name, value, 1, "positive", maximum)


def nonnegative_int(name: str, value: object, maximum: int = INT64_MAX) -> int:
    """Return ``value`` as an int, or raise if it is not an integer in 0..maximum (int64 by default)."""
    return _int_in_range(name, value, 0, "non-negative", maximum)


def finite_float(name: str, value: object, *, positive: bool = False, nonnegative: bool = False) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number (of the right sign).
    A number beyond float64 (an int such as 10**400) is not finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{name} must be finite (within float64); got {_short(value)}") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite; got {number}")
    if positive and number <= 0:
        raise ValueError(f"{name} must be > 0; got {number}")
    if nonnegative and number < 0:
        raise ValueError(f"{name} must be >= 0; got {number}")
    return number


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:25]}...{text[-25:]} ({len(text)} characters)"


def float_dtype(name: str, value: object) -> np.dtype:
    """Return the NumPy dtype for "float32" / "float64" (or the dtype objects), else raise."""
    try:
        dtype = None if value is None else np.dtype(value)  # np.dtype(None) would be float64
    except Exception:  # noqa: BLE001 - np.dtype raises TypeError, ValueError, KeyError, SyntaxError, ...
        dtype = None
    if dtype is None or dtype.name not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be one of {FLOAT_DTYPES}; got {_short(value)}")
    return dtype


def largest(dtype: object) -> float:
    """The largest finite value of a float dtype (float32: 3.4e38, float64: 1.8e308)."""
    return float(np.finfo(np.dtype(dtype)).max)


def max_abs(array: np.ndarray) -> float:
    """The largest |entry| of a real array (0 for an empty one), as a float."""
    return float(np.max(np.abs(array))) if array.size else 0.0


def finite_array(name: str, value: object, *, ndim: int | None = None, dtype: object = None) -> np.ndarray:
    """Return ``value`` as a NumPy array of real numbers, or raise if it is ragged, is not
    numeric, has the wrong rank, or holds NaN / inf (the message counts them).

    With ``dtype`` the array is returned cast to it, and values that do not fit (1e300 into
    float32) are refused; without, floats wider than float64 must still fit in float64."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        reason = " ".join(str(error).split())[:160]
        raise ValueError(
            f"{name} must be a rectangular real-valued array; got a {type(value).__name__} NumPy cannot "
            f"read as one ({reason})"
        ) from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real-valued array; got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array; got shape {array.shape}")
    if array.dtype.kind == "f" and array.size and not (np.isfinite(np.min(array)) and np.isfinite(np.max(array))):
        bad, first = _count_non_finite(array)  # reductions above: no allocation unless something is wrong
        raise ValueError(
            f"{name} must hold only finite values; got {bad} NaN/inf entries "
            f"(first at index {tuple(int(i) for i in first)})"
        )
    target = np.dtype(dtype) if dtype is not None else (np.dtype(np.float64) if array.dtype.itemsize > 8 and array.dtype.kind == "f" else None)
    if target is None:
        return array
    return cast_finite(name, array, target)


def _count_non_finite(array: np.ndarray) -> tuple[int, tuple[int, ...]]:
    """(how many entries are NaN/inf, the index of the first), a block of rows at a time so that
    a broadcast view is never materialised."""
    if array.ndim == 0:
        return 1, ()
    count, first = 0, None
    rows = max(1, 2**20 // max(1, array[:1].size))
    for start in range(0, array.shape[0], rows):
        bad = ~np.isfinite(array[start : start + rows])
        n_bad = int(np.count_nonzero(bad))
        if n_bad and first is None:
            index = np.unravel_index(int(np.argmax(bad)), bad.shape)
            first = (start + int(index[0]), *(int(i) for i in index[1:]))
        count += n_bad
    return count, first


def cast_finite(name: str, array: np.ndarray, dtype: object) -> np.ndarray:
    """``array`` cast to ``dtype``; raise if finite values overflow it (1e300 -> float32 inf)."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(dtype, copy=False)
    if cast is not array and cast.dtype.kind == "f" and not np.isfinite(cast).all():
        raise ValueError(
            f"{name} overflows {dtype.name}: largest magnitude given is {max_abs(array):.3g}, "
            f"the largest {dtype.name} is {largest(dtype):.3g}"
        )
    return cast


def check_named_arrays(params: object, expected: dict, dtype: str, config_text: str, shape_text: str) -> dict:
    """``params`` as a dict name -> array in ``dtype``, or ValueError unless it has exactly the names
    and shapes of ``expected`` (name -> shape) and only finite values that fit ``dtype``.
    ``config_text`` and ``shape_text`` describe the config in the messages (what the names and the
    shapes depend on)."""
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict name -> array; got {type(params).__name__}")
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected), key=repr)  # keys may be of any (mixed) type
    if missing or unexpected:
        raise ValueError(
            f"params do not match the config ({config_text}): missing {missing}, unexpected {unexpected}; "
            f"expected names {list(expected)}"
        )
    checked = {}
    for name, shape in expected.items():
        array = finite_array(f"params[{name!r}]", params[name])
        if array.shape != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape} ({shape_text}); got {array.shape}")
        checked[name] = cast_finite(f"params[{name!r}]", array, dtype)
    return checked
