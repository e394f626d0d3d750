r"""Interpolating two LSA models in the space of the functions they compute.

Per head, an LSA layer depends on its weights only through the products

    W_QK = W_q W_k^T  (D, D)      and      W_OV = W_v W_o  (D, D),

(the update is sum_h E W_QK[h] C^T C W_OV[h]); the factors themselves carry symmetries
(W_q A, W_k A^{-T} gives the same model), so interpolating raw factors is not meaningful.
``interpolate`` blends the products, ``(1 - alpha) P_a + alpha P_b`` per layer and head, and
returns them as a model with key_size = value_size = D:  W_q = W_QK, W_k = I, W_v = W_OV,
W_o = I.  The paper's "interpolated" model (trained and constructed weights averaged) is
alpha = 0.5.

One symmetry survives in the products: (s W_QK, W_OV / s) is the same model for any s != 0.
Before blending, model b's pair is moved along it to the s that best fits model a's W_QK
(s = <W_QK_a, W_QK_b> / ||W_QK_b||^2, per layer and head; s = 1 if that is 0), so that two
models computing the same function blend into that function again.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from iclgd._checks import finite_float
from iclgd.models import LSAConfig, attention_products, check_params, layer_prefixes


def effective_matrices(cfg: LSAConfig, params: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """prefix -> (W_QK (H, D, D), W_OV (H, D, D)) for every distinct layer."""
    params = check_params(cfg, params)
    out = {}
    for prefix in dict.fromkeys(layer_prefixes(cfg)):
        out[prefix] = attention_products(params, prefix)
    return out


def effective_config(cfg: LSAConfig) -> LSAConfig:
    """The same model shape with key_size = value_size = D (what ``interpolate`` returns)."""
    return dataclasses.replace(cfg, key_size=cfg.token_size, value_size=cfg.token_size)


def interpolate(cfg: LSAConfig, params_a: dict, params_b: dict, alpha: float) -> tuple[LSAConfig, dict]:
    """(config, params) of the model whose products are (1 - alpha) P_a + alpha P_b."""
    alpha = finite_float("alpha", alpha)
    eye = np.broadcast_to(np.eye(cfg.token_size, dtype=cfg.dtype), (cfg.n_heads, cfg.token_size, cfg.token_size))
    a, b = effective_matrices(cfg, params_a), effective_matrices(cfg, params_b)
    params = {}
    for prefix in a:
        (qk_a, ov_a), (qk_b, ov_b) = a[prefix], b[prefix]
        overlap = np.einsum("hij,hij->h", qk_a, qk_b)
        norm = np.einsum("hij,hij->h", qk_b, qk_b)
        scale = np.where(overlap != 0, overlap / np.where(norm > 0, norm, 1.0), 1.0)[:, None, None]
        qk_b, ov_b = qk_b * scale, ov_b / scale
        params[f"{prefix}.w_q"] = (1 - alpha) * qk_a + alpha * qk_b
        params[f"{prefix}.w_k"] = eye.copy()
        params[f"{prefix}.w_v"] = (1 - alpha) * ov_a + alpha * ov_b
        params[f"{prefix}.w_o"] = eye.copy()
    return effective_config(cfg), params
