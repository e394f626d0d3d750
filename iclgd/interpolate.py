r"""Interpolating two LSA models in the space of the functions they compute.

Per head, an LSA layer depends on its weights only through the products

    W_QK = W_q W_k^T  (D, D)      and      W_OV = W_v W_o  (D, D),

(the update is sum_h E W_QK[h] C^T C W_OV[h]); the factors themselves carry symmetries
(W_q A, W_k A^{-T} gives the same model), so interpolating raw factors is not meaningful.
``interpolate`` blends the products, ``(1 - alpha) P_a + alpha P_b`` per layer and head, and
returns them as a model with key_size = value_size = D:  W_q = W_QK, W_k = I, W_v = W_OV,
W_o = I.  The paper's "interpolated" model (trained and constructed weights averaged) is
alpha = 0.5.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from iclgd._checks import finite_float
from iclgd.models import LSAConfig, check_params, layer_prefixes


def effective_matrices(cfg: LSAConfig, params: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """prefix -> (W_QK (H, D, D), W_OV (H, D, D)) for every distinct layer."""
    params = check_params(cfg, params)
    out = {}
    for prefix in dict.fromkeys(layer_prefixes(cfg)):
        w_qk = params[f"{prefix}.w_q"] @ params[f"{prefix}.w_k"].swapaxes(-1, -2)
        w_ov = params[f"{prefix}.w_v"] @ params[f"{prefix}.w_o"]
        out[prefix] = (w_qk, w_ov)
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
        params[f"{prefix}.w_q"] = (1 - alpha) * qk_a + alpha * qk_b
        params[f"{prefix}.w_k"] = eye.copy()
        params[f"{prefix}.w_v"] = (1 - alpha) * ov_a + alpha * ov_b
        params[f"{prefix}.w_o"] = eye.copy()
    return effective_config(cfg), params
