r"""Every predictor answers per prefix: (B, K) predictions for sequences of K pairs.

Column k - 1 (k = 1..K) is the prediction of y_k from the pairs before it and x_k, i.e. the
predictor run on ``iclgd.tokens.constructed.prefix_tokens(examples, k)``; the last column is the
usual query prediction.  A query-only predictor becomes a per-prefix one with ``per_prefix``:

    per_prefix(predict_query, examples)[:, k - 1] = predict_query(prefix_tokens(examples, k)),  k >= 2

and column 0 (no context) is the predictor's answer to an empty context, 0 for every predictor
here: GD from W_0 = 0 and minimum-norm least squares / ridge on no equations give w = 0, and an
LSA that does not attend to its query has no key to attend to, so its update is 0 and
yhat = -(query y-slot) = 0.  (An LSA with ``include_query`` attends to the query itself; its
empty-context answer is not 0, so it is refused rather than guessed.)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from iclgd import baselines
from iclgd.models import LSAConfig
from iclgd.tasks.examples import Examples
from iclgd.tokens.constructed import prefix_tokens


def per_prefix(predict_query: Callable[[np.ndarray], np.ndarray], examples: Examples, dtype: str = "float64") -> np.ndarray:
    """(B, K) predictions of ``predict_query`` (tokens (B, N + 1, d + 1) -> (B,)) at every prefix;
    column 0 (no context) is 0 (see the module docstring)."""
    if not isinstance(examples, Examples):
        raise ValueError(f"examples must be an iclgd.tasks.Examples; got {type(examples).__name__}")
    out = np.zeros((examples.batch_size, examples.length))
    for k in range(2, examples.length + 1):
        out[:, k - 1] = predict_query(prefix_tokens(examples, k, dtype))
    return out


def lsa_per_prefix(backend, cfg: LSAConfig, params: dict, examples: Examples) -> np.ndarray:
    """(B, K) predictions of an LSA (any backend) at every prefix, in cfg.dtype."""
    if not isinstance(cfg, LSAConfig):
        raise ValueError(f"cfg must be an iclgd.LSAConfig; got {type(cfg).__name__}")
    if cfg.include_query:
        raise ValueError("per-prefix predictions need an LSA that does not attend to its query (include_query=False); got True")
    any_length = dataclasses.replace(cfg, n_context=None)  # the weights do not depend on N
    return per_prefix(lambda tokens: backend.predict(any_length, params, tokens), examples, cfg.dtype)


def gd_per_prefix(examples: Examples, eta: float, steps: int = 1) -> np.ndarray:
    """(B, K) predictions of ``steps`` GD steps from W_0 = 0 at rate eta on each prefix's context."""
    return per_prefix(lambda tokens: baselines.gd_predict(tokens, eta, steps), examples)


def least_squares_per_prefix(examples: Examples) -> np.ndarray:
    """(B, K) minimum-norm least-squares predictions on each prefix's context."""
    return per_prefix(baselines.least_squares_predict, examples)


def ridge_per_prefix(examples: Examples, ridge: float) -> np.ndarray:
    """(B, K) ridge predictions ((X^T X + ridge I)^-1 X^T y) . x_k on each prefix's context."""
    return per_prefix(lambda tokens: baselines.ridge_predict(tokens, ridge), examples)
