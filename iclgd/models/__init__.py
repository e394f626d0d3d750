"""Model families: configuration, parameter names and shapes, initialisation, input checks.

    lsa           the linear self-attention model of von Oswald et al. (LSAConfig)
    transformer   the causal transformer of Hoogland et al. (TransformerConfig)

``iclgd.models.families.module_of(cfg)`` finds a config's module (the same functions in each).

(GD and GD++ with learned rates, a model the training loop fits through the LSA, live in
``iclgd.gd_models``.)  Parameters are flat dicts name -> NumPy array, the same names in every
backend.
"""
from iclgd.models.lsa import (
    WEIGHT_NAMES,
    LSAConfig,
    attention_products,
    check_batch,
    check_params,
    check_targets,
    check_tokens,
    init_params,
    layer_prefixes,
    param_shapes,
    zero_params,
)
from iclgd.models.transformer import TransformerConfig

__all__ = [
    "TransformerConfig",
    "WEIGHT_NAMES",
    "LSAConfig",
    "attention_products",
    "check_batch",
    "check_params",
    "check_targets",
    "check_tokens",
    "init_params",
    "layer_prefixes",
    "param_shapes",
    "zero_params",
]
