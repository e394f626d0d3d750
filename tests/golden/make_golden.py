"""Write the golden states: small models evaluated by the NumPy oracle in float64.

    python tests/golden/make_golden.py            # rewrites tests/golden/*.npz
    python tests/golden/make_golden.py --out DIR  # writes them elsewhere

Every backend is checked against these files by tests/test_parity.py, and the files are
checked to be what this script writes now, so a change to the oracle's numbers cannot pass
unnoticed: if such a change is intended, run this script and commit the new files.

Each ``<case>.npz`` holds (all float64 arrays unless said otherwise):
    config            JSON string of the LSAConfig fields (n_context included)
    generator         this script's path in the repository; iclgd_version, numpy_version, seed
    params/<name>     the parameters, Gaussian with standard deviation ``param_std``
    tokens, targets,  a batch of BATCH_SIZE tasks (an iclgd.Batch): w ~ N(0, I_d),
    weights           x ~ U(-1, 1)^d, y = w.x; the query token is (x_q, 0)
    forward/<l>       forward's tokens after l layers, l = 0 (the input) .. n_layers
    predictions       predict (B,)
    loss              the half-MSE, a 0-d array
    grad/<name>       the loss's gradient with respect to each parameter
    sensitivity       d yhat / d x_q (B, d)

The transformer cases (TRANSFORMER_CASES, iclgd.TransformerConfig) hold, likewise:
    config            JSON string of the TransformerConfig fields and "family": "transformer"
                      (an LSA file's config has no family field: the loader reads it as an LSAConfig)
    generator, ...    as above
    params/<name>     the parameters (iclgd.models.transformer.param_shapes), Gaussian with standard
                      deviation ``param_std``; LayerNorm weights 1 + that noise
    tokens, targets,  TRANSFORMER_BATCH_SIZE sequences in the interleaved layout
    weights           (iclgd.tokens.interleaved): x ~ N(0, I_D), w ~ N(0, I_D), y = w.x + 0.3 N(0, 1);
                      x-tokens (0, x_k) at even indices, y-tokens (y_k, 0, ..., 0) at odd ones
    forward/<i>       forward's states: i = 0 the residual stream after the embedding, 1 .. n_layers
                      after each block, n_layers + 1 the output (B, 2K, D + 1)
    predictions       predict (B, K)
    per_position_loss the MSE at each position (K,)
    loss              the MSE, a 0-d array
    grad/<name>       the loss's gradient with respect to each parameter
(no sensitivity: the transformer has none).

The inputs are drawn here with ``numpy.random.default_rng(seed)`` alone (not with
iclgd.LinearRegressionTask or iclgd.NoisyRegressionTask), parameters first, so the files depend
on the oracle and nothing else in iclgd.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

import iclgd
from iclgd.models.transformer import param_shapes as transformer_param_shapes
from iclgd.tokens.interleaved import InterleavedBatch

GENERATOR = "tests/golden/make_golden.py"
HERE = Path(__file__).resolve().parent
BATCH_SIZE = 5

#: case name -> (LSAConfig fields, seed, parameter standard deviation); the deviations are chosen
#: so that every layer changes the tokens by tens of percent and nothing grows large
CASES = {
    "one_layer_one_head": ({"d": 3, "n_context": 4}, 101, 0.4),
    "two_layers_two_heads": ({"d": 2, "n_context": 4, "n_layers": 2, "n_heads": 2}, 102, 0.3),
    "three_tied_layers": ({"d": 2, "n_context": 4, "n_layers": 3, "n_heads": 2, "tied": True}, 103, 0.35),
    "include_query": ({"d": 2, "n_context": 4, "n_layers": 2, "include_query": True}, 104, 0.45),
    "key_size_not_value_size": ({"d": 2, "n_context": 4, "n_layers": 2, "n_heads": 2, "key_size": 2, "value_size": 4}, 105, 0.4),
}

TRANSFORMER_BATCH_SIZE = 3
#: the interleaved targets' noise: y = w.x + NOISE_STD N(0, 1)
NOISE_STD = 0.3
#: transformer case name -> (TransformerConfig fields, seed, parameter standard deviation)
TRANSFORMER_CASES = {
    "transformer_one_block_softmax_ln": (
        {"d": 3, "n_examples": 4, "n_layers": 1, "n_heads": 1, "d_model": 8, "d_mlp": 6}, 201, 0.5),
    "transformer_two_blocks_two_heads_no_projection": (
        {"d": 2, "n_examples": 3, "n_layers": 2, "n_heads": 2, "d_model": 8, "d_mlp": 6, "output_projection": False}, 202, 0.4),
    "transformer_linear_attention_no_ln": (
        {"d": 2, "n_examples": 4, "n_layers": 2, "n_heads": 2, "d_model": 8, "d_mlp": 6, "layer_norm": False, "attention": "linear"}, 203, 0.25),
}

def draw_inputs(cfg: iclgd.LSAConfig, seed: int, param_std: float) -> tuple[dict, iclgd.Batch]:
    """(params, batch of BATCH_SIZE tasks), all float64, from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    params = {name: param_std * rng.standard_normal(shape) for name, shape in iclgd.param_shapes(cfg).items()}
    weights = rng.standard_normal((BATCH_SIZE, cfg.d))
    x = rng.uniform(-1.0, 1.0, (BATCH_SIZE, cfg.n_context + 1, cfg.d))
    y = np.einsum("btd,bd->bt", x, weights)
    tokens = np.concatenate([x, y[:, :, None]], axis=2)
    tokens[:, -1, -1] = 0.0  # the query token is (x_q, 0)
    return params, iclgd.Batch(tokens, y[:, -1].copy(), weights)


def oracle_state(cfg: iclgd.LSAConfig, params: dict, batch: iclgd.Batch) -> dict[str, np.ndarray]:
    """Everything the oracle computes on these inputs, under the names the .npz files use."""
    oracle = iclgd.get_backend("numpy")
    loss, grads = oracle.loss_and_grad(cfg, params, batch)
    state = {f"forward/{layer}": tokens for layer, tokens in enumerate(oracle.forward(cfg, params, batch.tokens))}
    state["predictions"] = oracle.predict(cfg, params, batch.tokens)
    state["loss"] = np.asarray(loss, dtype=np.float64)
    state |= {f"grad/{name}": grad for name, grad in grads.items()}
    state["sensitivity"] = oracle.sensitivity(cfg, params, batch.tokens)
    return state


def golden_state(name: str) -> dict[str, np.ndarray]:
    """The full contents of ``<name>.npz``: metadata, inputs and the oracle's outputs."""
    fields, seed, param_std = CASES[name]
    cfg = iclgd.LSAConfig(**fields)
    params, batch = draw_inputs(cfg, seed, param_std)
    return {
        "config": np.asarray(json.dumps(dataclasses.asdict(cfg), sort_keys=True)),
        "generator": np.asarray(GENERATOR),
        "iclgd_version": np.asarray(iclgd.__version__),
        "numpy_version": np.asarray(np.__version__),
        "seed": np.asarray(seed),
        **{f"params/{key}": value for key, value in params.items()},
        "tokens": batch.tokens,
        "targets": batch.targets,
        "weights": batch.weights,
        **oracle_state(cfg, params, batch),
    }


def draw_transformer_inputs(cfg: iclgd.TransformerConfig, seed: int, param_std: float) -> tuple[dict, InterleavedBatch]:
    """(params, TRANSFORMER_BATCH_SIZE interleaved sequences), all float64, from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in transformer_param_shapes(cfg).items():
        value = param_std * rng.standard_normal(shape)
        params[name] = value + 1.0 if ".ln" in name and name.endswith(".weight") else value
    b, k, d = TRANSFORMER_BATCH_SIZE, cfg.n_examples, cfg.d
    x = rng.standard_normal((b, k, d))
    weights = rng.standard_normal((b, d))
    y = np.einsum("bkd,bd->bk", x, weights) + NOISE_STD * rng.standard_normal((b, k))
    tokens = np.zeros((b, 2 * k, d + 1))
    tokens[:, 0::2, 1:] = x  # x-tokens (0, x_k)
    tokens[:, 1::2, 0] = y  # y-tokens (y_k, 0, ..., 0)
    return params, InterleavedBatch(tokens, y, weights)


def transformer_oracle_state(cfg: iclgd.TransformerConfig, params: dict, batch: InterleavedBatch) -> dict[str, np.ndarray]:
    """Everything the oracle computes for the transformer, under the names the .npz files use."""
    oracle = iclgd.get_backend("numpy")
    loss, grads = oracle.loss_and_grad(cfg, params, batch)
    state = {f"forward/{index}": value for index, value in enumerate(oracle.forward(cfg, params, batch.tokens))}
    state["predictions"] = oracle.predict(cfg, params, batch.tokens)
    state["per_position_loss"] = oracle.per_position_loss(cfg, params, batch)
    state["loss"] = np.asarray(loss, dtype=np.float64)
    state |= {f"grad/{name}": grad for name, grad in grads.items()}
    return state


def transformer_golden_state(name: str) -> dict[str, np.ndarray]:
    """The full contents of ``<name>.npz`` for a transformer case."""
    fields, seed, param_std = TRANSFORMER_CASES[name]
    cfg = iclgd.TransformerConfig(**fields)
    params, batch = draw_transformer_inputs(cfg, seed, param_std)
    return {
        "config": np.asarray(json.dumps({**dataclasses.asdict(cfg), "family": cfg.family}, sort_keys=True)),
        "generator": np.asarray(GENERATOR),
        "iclgd_version": np.asarray(iclgd.__version__),
        "numpy_version": np.asarray(np.__version__),
        "seed": np.asarray(seed),
        **{f"params/{key}": value for key, value in params.items()},
        "tokens": batch.tokens,
        "targets": batch.targets,
        "weights": batch.weights,
        **transformer_oracle_state(cfg, params, batch),
    }


def write_golden(out_dir: Path) -> list[Path]:
    """Write every case (the LSA's, then the transformer's) to ``out_dir/<case>.npz``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, state in [*((n, golden_state) for n in CASES), *((n, transformer_golden_state) for n in TRANSFORMER_CASES)]:
        path = out_dir / f"{name}.npz"
        np.savez_compressed(path, **state(name))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help=f"where to write the .npz files (default {HERE})")
    args = parser.parse_args(argv)
    for path in write_golden(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
