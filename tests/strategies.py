"""Hypothesis strategies shared by the tests: model configs, tasks and parameters."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import iclgd


@st.composite
def lsa_configs(draw, max_layers=3, max_heads=3, max_d=8, max_n=12, dtype="float64"):
    """A config and a matching N: 1-3 layers, 1-3 heads, tied or not, include_query on or off."""
    d = draw(st.integers(1, max_d))
    n_context = draw(st.integers(1, max_n))
    cfg = iclgd.LSAConfig(
        d=d,
        n_layers=draw(st.integers(1, max_layers)),
        n_heads=draw(st.integers(1, max_heads)),
        key_size=draw(st.integers(1, d + 2)),
        value_size=draw(st.integers(1, d + 2)),
        tied=draw(st.booleans()),
        include_query=draw(st.booleans()),
        dtype=dtype,
    )
    return cfg, n_context


def random_params(cfg: iclgd.LSAConfig, seed: int, std: float) -> dict[str, np.ndarray]:
    """Non-small Gaussian parameters: every entry ~ N(0, std^2)."""
    rng = np.random.default_rng(seed)
    return {name: std * rng.standard_normal(shape) for name, shape in iclgd.param_shapes(cfg).items()}


def random_batch(d: int, n_context: int, batch_size: int, seed: int, x_scale: float = 1.0) -> iclgd.Batch:
    return iclgd.LinearRegressionTask(d=d, n_context=n_context, x_scale=x_scale).sample(batch_size, seed)


seeds = st.integers(0, 2**32 - 1)


@st.composite
def model_cases(draw, dtype="float64", max_layers=3, max_batch=6):
    """(cfg, params, batch) from a drawn config: Gaussian params of a drawn std in [0.2, 0.6]
    cast to ``dtype`` and a batch of 1..max_batch tasks (float64; backends cast it)."""
    cfg, n_context = draw(lsa_configs(max_layers=max_layers, dtype=dtype))
    seed = draw(seeds)
    params = {name: value.astype(dtype) for name, value in random_params(cfg, seed, draw(st.floats(0.2, 0.6))).items()}
    return cfg, params, random_batch(cfg.d, n_context, draw(st.integers(1, max_batch)), seed)
