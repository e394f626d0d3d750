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


# --- the developmental-landscape transformer -------------------------------------------------------


@st.composite
def transformer_configs(draw, max_layers=3, max_heads=4, max_d_model=32, max_mlp=32, max_examples=8, max_d=5, dtype="float64"):
    """A TransformerConfig as the issue's gradient check draws them: 1-3 layers, 1-4 heads,
    d_model a multiple of the heads up to 32, d_mlp 1-32, LN and output projection on or off,
    softmax or linear attention, K 1-8, D 1-5."""
    from iclgd.models.transformer import TransformerConfig

    n_heads = draw(st.integers(1, max_heads))
    return TransformerConfig(
        d=draw(st.integers(1, max_d)),
        n_examples=draw(st.integers(1, max_examples)),
        n_layers=draw(st.integers(1, max_layers)),
        n_heads=n_heads,
        d_model=n_heads * draw(st.integers(1, max_d_model // n_heads)),
        d_mlp=draw(st.integers(1, max_mlp)),
        layer_norm=draw(st.booleans()),
        output_projection=draw(st.booleans()),
        attention=draw(st.sampled_from(["softmax", "linear"])),
        dtype=dtype,
    )


def random_transformer_params(cfg, seed: int, std: float) -> dict[str, np.ndarray]:
    """Non-small random parameters: every entry ~ N(0, std^2), LayerNorm weights ~ 1 + N(0, std^2)
    (so that no LN weight sits at the init's exact 1 and no bias at its exact 0), in cfg.dtype."""
    from iclgd.models.transformer import param_shapes

    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        value = std * rng.standard_normal(shape)
        if ".ln" in name and name.endswith("weight"):
            value += 1.0
        params[name] = value.astype(cfg.dtype)
    return params


def random_interleaved(cfg, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, 2K, D + 1), targets (B, K)) in the interleaved format, float64, drawn with
    default_rng(seed) alone: x ~ N(0, I_D), w ~ N(0, I_D), y = w.x + 0.3 N(0, 1)."""
    rng = np.random.default_rng(seed)
    k, d = cfg.n_examples, cfg.d
    x = rng.standard_normal((batch_size, k, d))
    w = rng.standard_normal((batch_size, d))
    y = np.einsum("bkd,bd->bk", x, w) + 0.3 * rng.standard_normal((batch_size, k))
    tokens = np.zeros((batch_size, 2 * k, d + 1))
    tokens[:, 0::2, 1:] = x
    tokens[:, 1::2, 0] = y
    return tokens, y


@st.composite
def transformer_cases(draw, dtype="float64", max_batch=4, **config_bounds):
    """(cfg, params, tokens, targets): a drawn config, parameters of a drawn std in [0.3, 1.0]
    and 1..max_batch interleaved sequences (float64; backends cast them)."""
    cfg = draw(transformer_configs(dtype=dtype, **config_bounds))
    seed = draw(seeds)
    params = random_transformer_params(cfg, seed, draw(st.floats(0.3, 1.0)))
    tokens, targets = random_interleaved(cfg, draw(st.integers(1, max_batch)), seed + 1)
    return cfg, params, tokens, targets
