"""Backends: the same API computed by different engines.

``get_backend("numpy")`` is the hand-written oracle; ``"numba"`` and ``"jax"`` are fast paths
held to it.  Optional engines are imported only when asked for.
"""
from __future__ import annotations

import importlib
import importlib.util

# name -> (module, class, the pip extra that installs its engine, the engine's import names)
_REGISTRY = {
    "numpy": ("iclgd.backends.numpy_backend", "NumpyBackend", None, ()),
    "numba": ("iclgd.backends.numba_backend", "NumbaBackend", "numba", ("numba",)),
    "jax": ("iclgd.backends.jax_backend", "JaxBackend", "jax", ("jax", "optax")),
}


def available_backends() -> list[str]:
    """Names that get_backend knows (installed or not)."""
    return list(_REGISTRY)


def get_backend(name: str):
    """Return the backend called ``name``.

    Raises ValueError for an unknown name and ImportError, naming the pip extra, when the
    backend's engine is not installed.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; expected one of {available_backends()}")
    module_name, class_name, extra, engines = _REGISTRY[name]
    for engine in engines:
        try:
            importlib.import_module(engine)
        except ImportError as error:
            raise ImportError(
                f"backend {name!r} needs {engine}, which is not installed; "
                f"install it with: pip install 'iclgd[{extra}]'"
            ) from error
    return getattr(importlib.import_module(module_name), class_name)()


#: Training speed order on a CPU (measured by ``iclgd bench``): numba's fused kernels, then jax, then the oracle.
SPEED_ORDER = ("numba", "jax", "numpy")


def fastest_backend(measure: bool = False) -> str:
    """The name of the fastest installed backend.

    By default (cheap, nothing imported or run): numba, else jax, else numpy, the order of a
    quiet machine.  With ``measure=True``: timed now, on the load of the moment, by
    ``iclgd.backends.choice.choose_backend`` (numba at 1 and at all threads, jax, numpy; about a
    second plus jax's first compilation), and numba's thread count is set to the measured best
    when numba wins.  Nothing is cached: measure again when the load changes."""
    if measure:
        from iclgd.backends import choice

        chosen = choice.choose_backend()
        choice.apply_choice(chosen)
        return chosen.backend
    for name in SPEED_ORDER:
        engines = _REGISTRY[name][3]
        if all(importlib.util.find_spec(engine) is not None for engine in engines):
            return name
    return "numpy"
