"""GD++'s shared rates by direct search (iclgd.evaluate.tune_gdpp_rates) and the Nelder-Mead
search under it: known minima, an independent optimiser (scipy) as the oracle, and the scaling
law of the rates under x -> c x."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iclgd.evaluate import gd_loss, gdpp_loss, nelder_mead, tune_gd_eta, tune_gdpp_rates
from iclgd.tasks import LinearRegressionTask


def batch_of(seed: int, x_scale: float = 1.0, n_tasks: int = 300, d: int = 5, n_context: int = 6):
    return LinearRegressionTask(d=d, n_context=n_context, x_scale=x_scale).sample(n_tasks, seed=seed)


@settings(max_examples=15, deadline=None)
@given(centre=st.tuples(st.floats(-5, 5), st.floats(-5, 5)), stretch=st.floats(0.1, 10.0), tilt=st.floats(-0.9, 0.9))
def test_nelder_mead_finds_the_minimum_of_a_tilted_quadratic_bowl(centre, stretch, tilt):
    hessian = np.array([[stretch, tilt * np.sqrt(stretch)], [tilt * np.sqrt(stretch), 1.0]])  # positive definite
    centre = np.array(centre)

    def bowl(p):
        return float((p - centre) @ hessian @ (p - centre)) + 3.0

    found = nelder_mead(bowl, (0.0, 0.0), (1.0, 1.0), tolerance=1e-10)
    assert np.allclose(found, centre, atol=1e-5)


def test_nelder_mead_follows_the_rosenbrock_valley_to_its_minimum():
    def rosenbrock(p):
        return float((1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2)

    assert np.allclose(nelder_mead(rosenbrock, (-1.2, 1.0), (0.1, 0.1), tolerance=1e-12, max_evaluations=5000), (1.0, 1.0), atol=1e-5)


def test_one_step_gdpp_is_one_gd_step_with_the_exact_optimal_rate():
    batch = batch_of(0)
    assert tune_gdpp_rates(batch, 1) == (tune_gd_eta(batch, 1), 0.0)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), steps=st.integers(2, 3), x_scale=st.sampled_from([0.5, 1.0, 2.0]))
def test_the_tuned_rates_are_scipys_nelder_mead_minimum(seed, steps, x_scale):
    optimize = pytest.importorskip("scipy.optimize")
    batch = batch_of(seed, x_scale)
    eta, gamma = tune_gdpp_rates(batch, steps)

    def loss(p):
        return gdpp_loss(batch.tokens, batch.targets, p[0], p[1], steps)

    oracle = optimize.minimize(loss, x0=[1.1 * eta, 0.9 * gamma + 0.01 / x_scale**2], method="Nelder-Mead",
                               options=dict(xatol=1e-10, fatol=1e-15, maxiter=4000))
    assert loss((eta, gamma)) <= oracle.fun * (1 + 1e-9)
    assert np.allclose((eta, gamma), oracle.x, rtol=1e-4)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 2.0, 3.0]))
def test_scaling_the_inputs_by_c_divides_both_rates_by_c_squared(seed, scale):
    batch = batch_of(seed)
    scaled = type(batch)(tokens=batch.tokens * scale, targets=batch.targets * scale, weights=batch.weights)  # y = w.x scales with x
    eta, gamma = tune_gdpp_rates(batch, 2)
    eta_c, gamma_c = tune_gdpp_rates(scaled, 2)
    assert eta_c == pytest.approx(eta / scale**2, rel=1e-5) and gamma_c == pytest.approx(gamma / scale**2, rel=1e-5)


def test_tuned_gdpp_is_no_worse_than_tuned_gd_which_is_its_gamma_zero_case():
    batch = batch_of(4)
    for steps in (2, 3):
        eta, gamma = tune_gdpp_rates(batch, steps)
        assert gdpp_loss(batch.tokens, batch.targets, eta, gamma, steps) <= gd_loss(batch.tokens, batch.targets, tune_gd_eta(batch, steps), steps)
