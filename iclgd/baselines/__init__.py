r"""Baselines: predictors computed directly from each context, to compare trained models with.

    gd      GD, GD++ and their closed-form one-step optimum, least squares and ridge, on
            tokens in the constructed format (query predictions (B,)); von Oswald et al.
    bayes   the Bayes predictors of the noisy task family (``iclgd.tasks.NoisyRegressionTask``),
            per prefix on Examples ((B, K) predictions): ``ridge`` (the posterior mean under the
            Gaussian prior), ``dmmse`` (the posterior mean over a finite pool), ``zero``,
            ``least_squares``, and ``expected_ridge_loss`` (the Bayes risk per position);
            Hoogland et al.

Every name of ``iclgd.baselines.gd`` (this package was the module ``iclgd/baselines.py``) is
available here as before, e.g. ``iclgd.baselines.gd_predict``.
"""
from iclgd.baselines import bayes, gd
from iclgd.baselines.bayes import dmmse, expected_ridge_loss, least_squares, ridge, zero
from iclgd.baselines.gd import (
    OneStepOptimum,
    _close,
    _closed_form,
    _closed_form_in_floats,
    _finite_result,
    _initial_weights,
    _steps,
    _to_float,
    gd_predict,
    gd_weights,
    gdpp_predict,
    least_squares_predict,
    one_step_optimum,
    optimal_eta,
    optimal_loss,
    ridge_predict,
    ridge_weights,
    split_tokens,
    step_rates,
)

__all__ = [
    "OneStepOptimum",
    "bayes",
    "dmmse",
    "expected_ridge_loss",
    "gd",
    "gd_predict",
    "gd_weights",
    "gdpp_predict",
    "least_squares",
    "least_squares_predict",
    "one_step_optimum",
    "optimal_eta",
    "optimal_loss",
    "ridge",
    "ridge_predict",
    "ridge_weights",
    "split_tokens",
    "step_rates",
    "zero",
]
