"""Tasks: what a regression sequence is, drawn format-free.

A task family is an input law (``inputs``) x a prior over the task vector w x label noise;
it draws ``Examples`` (xs (B, K, d), ys (B, K), weights (B, d)), and a token format
(``iclgd.tokens``) turns them into a model's input.

    inputs     input laws (uniform, gaussian, laplace, exponential) for NumPy and jax
    examples   the Examples container
    linear     LinearRegressionTask, von Oswald et al.'s task (constructed tokens)
    noisy      NoisyRegressionTask, Hoogland et al.'s task: Gaussian inputs, label noise, a
               finite pool of M tasks or M = infinity (interleaved tokens)
"""
from iclgd.streams import as_generator
from iclgd.tasks.examples import Examples
from iclgd.tasks.inputs import INPUT_LAWS, X_DISTRIBUTIONS, X_SCALES, draw_inputs, resolve_x_scale, x_distribution_name
from iclgd.tasks.linear import LinearRegressionTask
from iclgd.tasks.noisy import NoisyRegressionTask
from iclgd.tokens.constructed import Batch
from iclgd.tokens.interleaved import InterleavedBatch

__all__ = [
    "Batch",
    "Examples",
    "INPUT_LAWS",
    "InterleavedBatch",
    "LinearRegressionTask",
    "NoisyRegressionTask",
    "X_DISTRIBUTIONS",
    "X_SCALES",
    "as_generator",
    "draw_inputs",
    "resolve_x_scale",
    "x_distribution_name",
]
