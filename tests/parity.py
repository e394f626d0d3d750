"""Array comparisons that say which tensor failed, where, and by how much.

``check_tensor`` compares one array with its expected value; ``check_all`` compares many and
reports every failing one in a single AssertionError.  A tensor passes when

    max |got - expected| <= max(rtol * scale, atol),     scale = max(max |expected|, atol_scale)

i.e. the tolerance is relative to the tensor's OWN largest entry (a gradient is judged on the
scale of its own parameter, not on that of the largest gradient of the model).  ``atol_scale``
is a floor on that scale, for a tensor whose expected value may be (close to) all zeros;
``atol`` (default 0) an absolute tolerance, for a tensor whose attainable accuracy is known
otherwise (tests/test_parity.py measures it in float32).  Shapes must agree exactly, and
dtypes too where asked (``check_tensor(dtype=...)``, ``check_dtypes``).  A NaN or infinity
in ``got`` fails unless ``expected`` has the same value at that entry.
"""
from __future__ import annotations

import numpy as np


def tensor_mismatch(name: str, got, expected, rtol: float, atol_scale: float = 0.0, atol: float = 0.0, dtype=None) -> str | None:
    """None when ``got`` matches ``expected``; otherwise one line naming the tensor, its shape,
    the largest absolute error with the index of that entry and both values there, the
    relative error (max abs error / scale) and the tolerance."""
    if got is None:
        return f"{name}: missing (the backend returned no such tensor)"
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return f"{name}: shape {got.shape}, expected shape {expected.shape}"
    if dtype is not None and got.dtype != np.dtype(dtype):
        return f"{name}: dtype {got.dtype}, expected dtype {np.dtype(dtype)} (shape {got.shape})"
    if got.size == 0:
        return None
    got64, expected64 = got.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(expected64)
    scale = max(float(np.max(np.abs(expected64[finite]), initial=0.0)), float(atol_scale))
    tolerance = max(rtol * scale, float(atol))
    same_non_finite = ~finite & ((got64 == expected64) | (np.isnan(got64) & np.isnan(expected64)))
    with np.errstate(invalid="ignore"):
        error = np.abs(got64 - expected64)
    error = np.where(same_non_finite, 0.0, np.where(np.isnan(error), np.inf, error))
    worst = np.unravel_index(int(np.argmax(error)), error.shape)
    max_error = float(error[worst])
    if max_error <= tolerance:
        return None
    relative = max_error / scale if scale > 0 else np.inf
    where = f"index {tuple(int(i) for i in worst)}" if error.ndim else "the scalar"
    how = f"rtol {rtol:g} x scale" if rtol * scale >= atol else "atol"
    return (
        f"{name}: shape {got.shape}, max abs error {max_error:.3g} at {where} "
        f"(got {float(got64[worst])!r}, expected {float(expected64[worst])!r}), "
        f"relative error {relative:.3g} of scale {scale:.3g}; tolerance {tolerance:.3g} ({how})"
    )


def check_tensor(name: str, got, expected, rtol: float, atol_scale: float = 0.0, atol: float = 0.0, dtype=None) -> None:
    """Raise AssertionError naming ``name`` unless ``got`` matches ``expected``."""
    message = tensor_mismatch(name, got, expected, rtol, atol_scale, atol, dtype)
    if message is not None:
        raise AssertionError(message)


def check_all(results: dict, rtol: float, atol_scale: float = 0.0) -> None:
    """Check every entry ``name -> (got, expected)`` or ``name -> (got, expected, atol)``;
    raise one AssertionError listing every failing tensor (and how many of how many
    failed), or return if all match."""
    failures = []
    for name, (got, expected, *atol) in results.items():
        message = tensor_mismatch(name, got, expected, rtol, atol_scale, atol[0] if atol else 0.0)
        if message is not None:
            failures.append(message)
    if failures:
        raise AssertionError(f"{len(failures)} of {len(results)} tensors differ:\n  " + "\n  ".join(failures))


def check_dtypes(arrays: dict, dtype) -> None:
    """Raise one AssertionError naming every array of ``name -> array`` whose dtype is not ``dtype``."""
    wrong = [f"{name}: {np.asarray(array).dtype}" for name, array in arrays.items() if np.asarray(array).dtype != np.dtype(dtype)]
    if wrong:
        raise AssertionError(f"expected dtype {np.dtype(dtype)}, got:\n  " + "\n  ".join(wrong))
