"""`iclgd check`: a quick, printed self-check of the oracle's central identities.

Each row is computed on fresh data from an explicit seed:
  1. the GD construction's prediction against GD computed directly, K = 1..4 steps;
  2. the hand-written gradient against central finite differences on a random model;
  3. a Monte Carlo estimate of one GD step's half-MSE at the closed-form eta* against the
     closed-form optimum (with its standard error).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import baselines
from iclgd._checks import positive_int
from iclgd.backends import get_backend
from iclgd.construct import gd_construction
from iclgd.metrics import estimate, half_squared_errors
from iclgd.models import LSAConfig, init_params
from iclgd.tasks import LinearRegressionTask


@dataclass(frozen=True)
class CheckRow:
    claim: str
    measured: float
    expected: str
    ok: bool


def finite_difference_gradient(loss_fn, params: dict, step: float = 1e-6) -> dict[str, np.ndarray]:
    """Central differences (L(p + h e) - L(p - h e)) / 2h for every entry of every parameter."""
    grads = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            original = value[index]
            value[index] = original + step
            up = loss_fn(params)
            value[index] = original - step
            down = loss_fn(params)
            value[index] = original
            grad[index] = (up - down) / (2 * step)
        grads[name] = grad
    return grads


def relative_error(a: dict, b: dict) -> float:
    """max |a - b| / max |b| over all parameters."""
    num = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    den = max(float(np.max(np.abs(b[k]))) for k in b)
    return num / max(den, 1e-300)


def run_checks(seed: int = 0, n_tasks: int = 200_000) -> list[CheckRow]:
    n_tasks = positive_int("n_tasks", n_tasks)
    if n_tasks < 2:
        raise ValueError(f"n_tasks must be >= 2 for a standard error; got {n_tasks}")
    backend = get_backend("numpy")
    rows = []
    task = LinearRegressionTask(d=10, n_context=10)
    batch = task.sample(1024, seed)
    for steps in range(1, 5):
        cfg = LSAConfig(d=10, n_layers=steps, tied=True, n_context=10)
        eta = 0.9
        model = backend.predict(cfg, gd_construction(cfg, eta), batch.tokens)
        direct = baselines.gd_predict(batch.tokens, eta, steps)
        error = float(np.max(np.abs(model - direct)) / np.max(np.abs(direct)))
        rows.append(CheckRow(f"LSA({steps} tied layers, GD construction) = {steps} GD steps", error, "<= 1e-12 rel.", error <= 1e-12))

    cfg = LSAConfig(d=3, n_layers=2, n_heads=2, key_size=2)
    small = LinearRegressionTask(d=3, n_context=4).sample(8, seed + 1)
    params = init_params(cfg, seed, scale=3.0)
    _, grads = backend.loss_and_grad(cfg, params, small)
    numeric = finite_difference_gradient(lambda p: backend.loss(cfg, p, small), {k: v.copy() for k, v in params.items()})
    error = relative_error(grads, numeric)
    rows.append(CheckRow("hand-written gradient = finite differences (2 layers, 2 heads)", error, "<= 1e-6 rel.", error <= 1e-6))

    optimum = baselines.one_step_optimum(10, 10, 1.0)
    rng = np.random.default_rng(seed + 2)
    losses = []
    for start in range(0, n_tasks, 10_000):  # in chunks, to bound memory
        chunk = task.sample(min(10_000, n_tasks - start), rng)
        losses.append(half_squared_errors(baselines.gd_predict(chunk.tokens, optimum.eta), chunk.targets))
    mc = estimate(np.concatenate(losses))
    rows.append(
        CheckRow(
            f"one GD step at eta* = {optimum.eta:.4f}: Monte Carlo half-MSE ({n_tasks} tasks, s.e. {mc.stderr:.4f})",
            mc.mean,
            f"{optimum.half_mse:.4f} +- 4 s.e.",
            abs(mc.mean - optimum.half_mse) <= 4 * mc.stderr,
        )
    )
    return rows


def format_rows(rows: list[CheckRow]) -> str:
    lines = ["| claim | measured | expected | ok |", "|---|---|---|---|"]
    lines += [f"| {r.claim} | {r.measured:.4g} | {r.expected} | {'yes' if r.ok else 'NO'} |" for r in rows]
    return "\n".join(lines)
