"""The LLC estimator's mechanics (iclgd.optim.sgld, iclgd.sgld, iclgd.analysis.llc): the SGLD
step in its limits, the MALA check, divergence, reproducibility, restriction, per-position
estimates and the backends' agreement.  Calibration against models of known learning
coefficient is tests/test_llc_calibration.py; the jax chains are tests/test_jax_sgld.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_batch, random_params, seeds

import iclgd
from iclgd.analysis.llc import LLCDiverged, estimate_llc, estimate_llc_of, mala_acceptance
from iclgd.optim import apply_updates, sgld

# --- small objectives written here, independently of the library's models ---------------------------


class Quadratic:
    """L(w) = (1/2) sum_j h_j (w_j - w*_j)^2 + offset over one parameter "w" (no data)."""

    n_positions = None

    def __init__(self, curvatures, center=None, offset=0.0, n_samples=100):
        self.h = np.asarray(curvatures, dtype=np.float64)
        self.center = np.zeros_like(self.h) if center is None else np.asarray(center, dtype=np.float64)
        self.offset, self.n_samples = offset, n_samples

    def loss(self, params, indices=None):
        return float(0.5 * np.sum(self.h * (params["w"] - self.center) ** 2) + self.offset)

    def loss_and_grad(self, params, indices=None):
        return self.loss(params), {"w": self.h * (params["w"] - self.center)}


class FailsAtCall(Quadratic):
    """A quadratic whose loss_and_grad returns NaN at its ``bad_call``-th call (0-based)."""

    def __init__(self, bad_call, n_params=3):
        super().__init__(np.ones(n_params))
        self.bad_call, self.calls = bad_call, 0

    def loss_and_grad(self, params, indices=None):
        call, self.calls = self.calls, self.calls + 1
        loss, grads = super().loss_and_grad(params)
        return (float("nan"), grads) if call == self.bad_call else (loss, grads)


class Flat:
    """L(w) = 0 for every w (any number of parameters): SGLD is then a localised random walk."""

    n_positions = None

    def __init__(self, shapes, n_samples=100):
        self.shapes, self.n_samples = shapes, n_samples

    def loss(self, params, indices=None):
        return 0.0

    def loss_and_grad(self, params, indices=None):
        return 0.0, {name: np.zeros_like(p) for name, p in params.items()}


def _lsa_problem(seed=0, n=64, layers=1):
    cfg = iclgd.LSAConfig(d=3, n_layers=layers, dtype="float64")
    return cfg, random_params(cfg, seed, 0.3), random_batch(3, 6, n, seed)


def _tiny_transformer(n=32, seed=0):
    from iclgd.models.transformer import TransformerConfig, init_params

    cfg = TransformerConfig(d=2, n_examples=4, n_layers=1, n_heads=2, d_model=8, d_mlp=8, dtype="float64")
    batch = iclgd.NoisyRegressionTask(d=2, n_examples=4).sample(n, seed)
    return cfg, init_params(cfg, seed), batch


# --- the SGLD transform in its limits ---------------------------------------------------------------


@settings(max_examples=30)
@given(seed=seeds, step_size=st.floats(1e-6, 1e-1), nbeta=st.floats(1e-3, 1e4))
def test_without_localization_and_noise_an_sgld_step_is_a_gradient_step_of_size_eps_nbeta_over_two(seed, step_size, nbeta):
    rng = np.random.default_rng(seed)
    params = {"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(4)}
    grads = {name: rng.standard_normal(p.shape) for name, p in params.items()}
    center = {name: rng.standard_normal(p.shape) for name, p in params.items()}
    transform = sgld(step_size, nbeta, 0.0, center)
    updates, _ = transform.update(grads, transform.init(params), params, noise=None)
    for name in params:
        expected = params[name] - (step_size * nbeta / 2) * grads[name]
        np.testing.assert_allclose(apply_updates(params, updates)[name], expected, rtol=1e-14, atol=1e-14)


@settings(max_examples=10)
@given(seed=seeds, step_size=st.floats(1e-4, 1e-2), localization=st.floats(1.0, 100.0), n_steps=st.integers(1, 400))
def test_with_nbeta_zero_the_chain_is_a_localised_random_walk_of_known_mean_squared_distance(seed, step_size, localization, n_steps):
    """nbeta = 0: w_{t+1} - w* = a (w_t - w*) + sqrt(eps) xi, a = 1 - eps gamma / 2, so each
    coordinate's E (w_t - w*_j)^2 = eps (1 - a^{2t}) / (1 - a^2); checked over 20,000
    independent coordinates (tolerance 5 standard errors of a chi-square mean)."""
    rng = np.random.default_rng(seed)
    n_coordinates = 20_000
    center = {"w": rng.standard_normal(n_coordinates)}
    transform = sgld(step_size, 0.0, localization, center)
    params, state = dict(center), transform.init(center)
    for _ in range(n_steps):
        noise = {"w": rng.standard_normal(n_coordinates)}
        updates, state = transform.update({"w": rng.standard_normal(n_coordinates)}, state, params, noise=noise)
        params = apply_updates(params, updates)
    a = 1 - step_size * localization / 2
    expected = step_size * (1 - a ** (2 * n_steps)) / (1 - a**2)
    observed = np.mean((params["w"] - center["w"]) ** 2)
    assert abs(observed / expected - 1) < 5 * math.sqrt(2 / n_coordinates)


def test_the_estimators_distance_trace_follows_the_random_walks_closed_form():
    """The same through estimate_llc_of on a flat loss (the loss has no pull, whatever nbeta):
    mean over 64 chains of ||w_t - w*||^2 with P = 50 moving coordinates."""
    n_params, eps, gamma = 50, 1e-3, 20.0
    objective = Flat({"w": (n_params,)})
    result = estimate_llc_of(objective, {"w": np.zeros(n_params)}, step_size=eps, nbeta=1.0, localization=gamma,
                             num_chains=64, num_draws=300, num_burnin_steps=0, batch_size=None, mala_every=0)
    t = np.arange(300)
    a = 1 - eps * gamma / 2
    expected = n_params * eps * (1 - a ** (2 * t)) / (1 - a**2)
    observed = np.mean(result.distance_trace**2, axis=0)
    # chi-square with P degrees of freedom per chain: relative s.e. sqrt(2 / (P * chains))
    np.testing.assert_allclose(observed[1:], expected[1:], rtol=5 * math.sqrt(2 / (n_params * 64)))
    assert result.llc_mean == 0.0


def test_a_restricted_chain_moves_only_the_parameters_it_names():
    """restrict="a*": the random walk's mean squared distance counts only a's 30 coordinates."""
    eps, gamma = 1e-3, 20.0
    objective = Flat({"a1": (10,), "a2": (20,), "b": (40,)})
    center = {"a1": np.zeros(10), "a2": np.zeros(20), "b": np.zeros(40)}
    result = estimate_llc_of(objective, center, step_size=eps, nbeta=1.0, localization=gamma, num_chains=64,
                             num_draws=300, num_burnin_steps=0, batch_size=None, mala_every=0, restrict="a*")
    a = 1 - eps * gamma / 2
    expected = 30 * eps * (1 - a ** (2 * 299)) / (1 - a**2)
    assert abs(np.mean(result.distance_trace[:, -1] ** 2) / expected - 1) < 5 * math.sqrt(2 / (30 * 64))


def test_a_masked_entry_gets_no_update():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal(6)}
    mask = {"w": np.array([1.0, 0, 1, 0, 0, 1])}
    transform = sgld(0.1, 3.0, 2.0, {"w": np.zeros(6)}, mask)
    updates, _ = transform.update({"w": rng.standard_normal(6)}, transform.init(params), params, noise={"w": rng.standard_normal(6)})
    assert np.all(updates["w"][mask["w"] == 0] == 0) and np.all(updates["w"][mask["w"] == 1] != 0)


# --- MALA -------------------------------------------------------------------------------------------------


def test_the_mala_acceptance_equals_its_value_computed_by_hand_on_two_parameters():
    """L(w) = (1/2)(2 w1^2 + 5 w2^2), w* = (0.1, -0.2), w = (0.3, 0.1) -> w' = (0.3, 0.3),
    eps = 0.01, nbeta = 10, gamma = 2, written out coordinate by coordinate:
        U(v) = nbeta L(v) + (gamma/2)|v - w*|^2,  G(v) = nbeta grad L(v) + gamma (v - w*),
        log alpha = U(w) - U(w') - |w - w' + (eps/2) G(w')|^2/(2 eps) + |w' - w + (eps/2) G(w)|^2/(2 eps)."""
    eps, nbeta, gamma = 0.01, 10.0, 2.0
    w1, w2, v1, v2, c1, c2 = 0.3, 0.1, 0.3, 0.3, 0.1, -0.2
    U_w = nbeta * 0.5 * (2 * w1**2 + 5 * w2**2) + gamma / 2 * ((w1 - c1) ** 2 + (w2 - c2) ** 2)
    U_v = nbeta * 0.5 * (2 * v1**2 + 5 * v2**2) + gamma / 2 * ((v1 - c1) ** 2 + (v2 - c2) ** 2)
    G_w = (nbeta * 2 * w1 + gamma * (w1 - c1), nbeta * 5 * w2 + gamma * (w2 - c2))
    G_v = (nbeta * 2 * v1 + gamma * (v1 - c1), nbeta * 5 * v2 + gamma * (v2 - c2))
    forward = ((v1 - w1 + eps / 2 * G_w[0]) ** 2 + (v2 - w2 + eps / 2 * G_w[1]) ** 2) / (2 * eps)
    backward = ((w1 - v1 + eps / 2 * G_v[0]) ** 2 + (w2 - v2 + eps / 2 * G_v[1]) ** 2) / (2 * eps)
    by_hand = min(1.0, math.exp(U_w - U_v - backward + forward))
    assert 0.7 < by_hand < 0.8  # an uphill proposal, taken three times in four (0.7552)

    objective = Quadratic([2.0, 5.0])
    w, v, center = {"w": np.array([w1, w2])}, {"w": np.array([v1, v2])}, {"w": np.array([c1, c2])}
    loss_w, grad_w = objective.loss_and_grad(w)
    loss_v, grad_v = objective.loss_and_grad(v)
    assert abs(mala_acceptance(w, v, loss_w, grad_w, loss_v, grad_v, center, eps, nbeta, gamma) - by_hand) <= 1e-9


def test_small_steps_on_a_quadratic_are_almost_always_accepted_and_large_ones_not():
    objective = Quadratic(np.linspace(1, 3, 5))
    center = {"w": np.zeros(5)}
    run = lambda eps: estimate_llc_of(objective, center, step_size=eps, nbeta=100.0, localization=1.0, num_chains=2,
                                      num_draws=200, num_burnin_steps=50, batch_size=None)
    assert run(1e-5).diagnostics["mala_acceptance"] > 0.99
    assert run(5e-3).diagnostics["mala_acceptance"] < 0.9
    assert any("MALA" in w for w in run(5e-3).diagnostics["warnings"])


# --- the estimate: definition, defaults, reproducibility, failures -------------------------------------------


def test_the_estimate_is_nbeta_times_the_mean_score_above_the_loss_at_the_center():
    objective = Quadratic([1.0, 2.0, 4.0], offset=0.7)
    result = estimate_llc_of(objective, {"w": np.zeros(3)}, step_size=1e-3, nbeta=50.0, localization=5.0,
                             num_chains=3, num_draws=40, num_burnin_steps=10, batch_size=None)
    assert result.init_loss == 0.7
    np.testing.assert_allclose(result.llc_per_chain, 50.0 * (result.loss_trace.mean(axis=1) - 0.7), rtol=1e-12)
    assert result.llc_mean == pytest.approx(result.llc_per_chain.mean(), rel=1e-12)
    assert result.llc_std_error == pytest.approx(result.llc_per_chain.std(ddof=1) / math.sqrt(3), rel=1e-12)
    assert result.loss_trace.shape == (3, 40) and result.burnin_trace.shape == (3, 10)


def test_nbeta_defaults_to_n_over_log_n_and_burn_in_to_two_localization_times():
    cfg, params, batch = _lsa_problem(n=200)
    result = estimate_llc("numpy", cfg, params, batch, step_size=1e-4, localization=100.0, num_chains=1, num_draws=2,
                          batch_size=16)
    assert result.settings.nbeta == pytest.approx(200 / math.log(200))
    assert result.settings.num_burnin_steps == math.ceil(2 / (1e-4 * 100.0))


def test_a_batch_as_large_as_the_data_set_means_full_batch_gradients():
    cfg, params, batch = _lsa_problem(n=20)
    assert estimate_llc("numpy", cfg, params, batch, num_chains=1, num_draws=2, num_burnin_steps=0, batch_size=1024).settings.batch_size is None


def test_with_full_batch_gradients_every_score_is_the_same_number():
    cfg, params, batch = _lsa_problem(n=40)
    estimates = [estimate_llc("numpy", cfg, params, batch, step_size=1e-4, localization=10.0, num_chains=2, num_draws=20,
                              num_burnin_steps=5, batch_size=None, score=score).llc_per_chain
                 for score in ("minibatch", "paired", "full")]
    np.testing.assert_allclose(estimates[1], estimates[0], rtol=1e-9)
    np.testing.assert_allclose(estimates[2], estimates[0], rtol=1e-9)


@settings(max_examples=5)
@given(seed=st.integers(0, 1000))
def test_an_estimate_is_reproducible_from_its_seed(seed):
    cfg, params, batch = _lsa_problem()
    run = lambda s: estimate_llc("numpy", cfg, params, batch, step_size=1e-4, num_chains=2, num_draws=15,
                                 num_burnin_steps=5, batch_size=8, seed=s)
    first, again, other = run(seed), run(seed), run(seed + 1)
    np.testing.assert_array_equal(first.loss_trace, again.loss_trace)
    assert first.llc_mean == again.llc_mean and first.llc_mean != other.llc_mean


def test_a_chain_does_not_depend_on_how_many_chains_run_beside_it():
    cfg, params, batch = _lsa_problem()
    run = lambda c: estimate_llc("numpy", cfg, params, batch, step_size=1e-4, num_chains=c, num_draws=10,
                                 num_burnin_steps=3, batch_size=8, seed=4)
    np.testing.assert_array_equal(run(2).loss_trace, run(5).loss_trace[:2])


@pytest.mark.parametrize("bad_call, message", [
    (2 * 3 + 1, "chain 1, burn-in step 2"),
    (5 * 3 + 2, "chain 2, draw 1 (after 4 burn-in steps)"),
])
def test_a_non_finite_loss_stops_the_estimate_naming_the_chain_and_the_draw(bad_call, message):
    """Chains advance in lockstep (step-major, chain-minor), one loss_and_grad call per chain and
    step when MALA is off, so call t * 3 + c is chain c's step t."""
    objective = FailsAtCall(bad_call)
    with pytest.raises(LLCDiverged, match=message.replace("(", r"\(").replace(")", r"\)")):
        estimate_llc_of(objective, {"w": np.zeros(3)}, step_size=1e-3, nbeta=10.0, localization=1.0, num_chains=3,
                        num_draws=10, num_burnin_steps=4, batch_size=None, mala_every=0)


def test_a_step_size_that_blows_up_the_lsa_is_reported_with_advice():
    cfg, params, batch = _lsa_problem()
    with pytest.raises(LLCDiverged, match=r"chain \d+, .*lower step_size"):
        estimate_llc("numpy", cfg, params, batch, step_size=10.0, nbeta=1e4, localization=1.0, num_chains=2,
                     num_draws=200, num_burnin_steps=0, batch_size=8)


@pytest.mark.parametrize("change, message", [
    ({"step_size": 0.0}, "step_size must be positive"),
    ({"step_size": float("nan")}, "step_size must be a finite number"),
    ({"nbeta": -1.0}, "nbeta must be positive"),
    ({"localization": -1.0}, "localization must be non-negative"),
    ({"num_chains": 0}, "num_chains must be an integer >= 1"),
    ({"num_draws": 2.5}, "num_draws must be an integer >= 1"),
    ({"num_burnin_steps": -1}, "num_burnin_steps must be an integer >= 0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"score": "mean"}, "score must be one of"),
    ({"restrict": "nothing*"}, "matches no parameter"),
    ({"restrict": {"W_q": np.ones(3)}}, "names parameters the model has not"),
    ({"per_position": True}, "per_position needs a model with a loss at every position"),
])
def test_bad_arguments_are_refused_naming_what_was_expected(change, message):
    cfg, params, batch = _lsa_problem()
    arguments = dict(num_chains=1, num_draws=2, num_burnin_steps=0) | change
    with pytest.raises(ValueError, match=message):
        estimate_llc("numpy", cfg, params, batch, **arguments)


def test_data_that_is_not_a_batch_is_refused_saying_what_a_data_set_is():
    cfg, params, _ = _lsa_problem()
    with pytest.raises(ValueError, match="data must be a batch of tasks"):
        estimate_llc("numpy", cfg, params, np.zeros((3, 4)))


# --- the model families -------------------------------------------------------------------------------


def test_numba_chains_equal_numpy_chains_in_float64():
    pytest.importorskip("numba")
    cfg, params, batch = _lsa_problem(layers=2)
    run = lambda backend: estimate_llc(backend, cfg, params, batch, step_size=1e-4, num_chains=2, num_draws=30,
                                       num_burnin_steps=5, batch_size=16, seed=3, score="paired")
    host, compiled = run("numpy"), run("numba")
    np.testing.assert_allclose(compiled.loss_trace, host.loss_trace, rtol=1e-9)
    np.testing.assert_allclose(compiled.diagnostics["mala_acceptance"], host.diagnostics["mala_acceptance"], rtol=1e-9)


def test_a_numba_estimate_does_not_depend_on_the_thread_count():
    pytest.importorskip("numba")
    from iclgd.backends import numba_backend

    cfg, params, batch = _lsa_problem(layers=2)
    run = lambda: estimate_llc("numba", cfg, params, batch, step_size=1e-4, num_chains=2, num_draws=20,
                               num_burnin_steps=5, batch_size=16, seed=5)
    before = numba_backend.numba.get_num_threads()
    try:
        numba_backend.set_threads(1)
        one = run()
    finally:
        numba_backend.set_threads(before)
    many = run()
    np.testing.assert_array_equal(one.loss_trace, many.loss_trace)
    assert one.llc_mean == many.llc_mean


def test_the_per_position_estimates_average_to_the_whole_estimate():
    """loss = mean_k L_k, so with the minibatch score mean_k lambda-hat_k = lambda-hat exactly."""
    cfg, params, batch = _tiny_transformer()
    result = estimate_llc("numpy", cfg, params, batch, step_size=1e-4, nbeta=20.0, localization=10.0, num_chains=2,
                          num_draws=10, num_burnin_steps=2, batch_size=8, per_position=True)
    per_position = result.per_position
    assert per_position["llc_mean"].shape == (cfg.n_examples,)
    assert per_position["llc_mean"].mean() == pytest.approx(result.llc_mean, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(per_position["llc_per_chain"].mean(axis=1), result.llc_per_chain, rtol=1e-9, atol=1e-12)


def test_per_position_recording_does_not_change_the_chain():
    cfg, params, batch = _tiny_transformer()
    run = lambda pp: estimate_llc("numpy", cfg, params, batch, step_size=1e-4, nbeta=20.0, localization=10.0,
                                  num_chains=2, num_draws=8, num_burnin_steps=2, batch_size=8, per_position=pp)
    np.testing.assert_allclose(run(True).loss_trace, run(False).loss_trace, rtol=1e-12)


def test_a_restricted_transformer_estimate_moves_only_the_named_block():
    """With nbeta and gamma ~ 0 the chain is a Gaussian random walk: E||w_t - w*||^2 = P eps t,
    P the moving entries only (block0.attn.*), tolerance 5 chi-square standard errors."""
    cfg, params, batch = _tiny_transformer()
    moving = sum(p.size for name, p in params.items() if name.startswith("block0.attn."))
    assert 0 < moving < sum(p.size for p in params.values()) / 2
    eps, steps, chains = 1e-4, 6, 8
    result = estimate_llc("numpy", cfg, params, batch, step_size=eps, nbeta=1e-9, localization=0.0, num_chains=chains,
                          num_draws=steps, num_burnin_steps=0, batch_size=8, restrict="block0.attn.*", mala_every=0)
    observed = np.mean(result.distance_trace[:, -1] ** 2)
    assert abs(observed / (moving * eps * (steps - 1)) - 1) < 5 * math.sqrt(2 / (moving * chains))


def test_the_summary_is_json_ready():
    import json

    cfg, params, batch = _tiny_transformer()
    result = estimate_llc("numpy", cfg, params, batch, step_size=1e-4, nbeta=20.0, localization=10.0, num_chains=2,
                          num_draws=4, num_burnin_steps=1, batch_size=8, per_position=True)
    summary = json.loads(json.dumps(result.summary()))
    assert summary["llc_mean"] == result.llc_mean and len(summary["per_position"]["llc_mean"]) == cfg.n_examples


# --- calibrate ----------------------------------------------------------------------------------------------


def test_calibrate_recommends_the_largest_step_with_high_acceptance_and_flat_traces():
    from iclgd.analysis.calibrate import CalibrationRow, recommend

    row = lambda eps, nbeta, mala, flat=True, diverged=None: CalibrationRow(eps, nbeta, 1.0, 0.1, mala, flat, True, diverged)
    rows = [row(1e-5, 10, 0.99), row(1e-4, 10, 0.95), row(1e-3, 10, 0.95, flat=False), row(1e-2, 10, 0.5),
            row(1e-1, 10, 0.0, flat=False, diverged="chain 0, draw 3"),
            row(1e-5, 100, 0.85), row(1e-4, 100, 0.3)]
    assert recommend(rows, 0.9) == {10: 1e-4, 100: None}
    assert recommend(rows, 0.8) == {10: 1e-4, 100: 1e-5}


def test_calibrate_sweeps_the_grid_and_its_acceptance_falls_with_the_step_size():
    from iclgd.analysis.calibrate import calibrate_of

    lines = []
    objective = Quadratic(np.linspace(1, 3, 5))
    calibration = calibrate_of(objective, {"w": np.zeros(5)}, step_sizes=(1e-2, 1e-5, 1e-4, 1e-3, 1.0), nbetas=(100.0,),
                               localization=1.0, num_chains=2, num_draws=100, batch_size=None, echo=lines.append)
    rows = [r for r in calibration.rows if r.diverged is None]
    assert [r.step_size for r in calibration.rows] == [1e-5, 1e-4, 1e-3, 1e-2, 1.0]
    assert all(a.mala_acceptance >= b.mala_acceptance for a, b in zip(rows, rows[1:]))
    assert calibration.rows[-1].diverged is not None  # eps * nbeta * h = 300: the chain explodes
    chosen = calibration.recommended[100.0]
    assert chosen is not None and chosen < 1.0 and "recommended" in calibration.table()
    assert any("step_size" in line for line in lines) and calibration.table() in lines


def test_the_summary_of_one_chain_is_strict_json_with_null_for_the_undefined_standard_error():
    import json

    cfg, params, batch = _tiny_transformer()
    result = estimate_llc("numpy", cfg, params, batch, step_size=1e-4, nbeta=20.0, localization=10.0, num_chains=1,
                          num_draws=4, num_burnin_steps=1, batch_size=8, per_position=True)
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    assert summary["llc_std_error"] is None and summary["per_position"]["llc_std_error"] == [None] * cfg.n_examples


# --- settling ------------------------------------------------------------------------------------------------


def test_chains_that_start_stationary_are_reported_settled_in_burn_in():
    """A quadratic with relaxation time 1 / (eps (nbeta h + gamma)) ~ 3 steps and 100 burn-in steps:
    the chains are stationary when the draws begin, and the diagnostics must not say otherwise."""
    from iclgd.analysis.known_lc import LinearRegression

    model = LinearRegression(3, 1000, seed=3)
    result = estimate_llc_of(model, model.initial_params(), step_size=2e-3, localization=1.0, num_chains=16,
                             num_draws=5000, num_burnin_steps=100, batch_size=None, seed=23, mala_every=0)
    assert result.diagnostics["settled_in_burnin"], result.diagnostics
    assert not any("settl" in w for w in result.diagnostics["warnings"])


def test_chains_still_spreading_after_burn_in_are_reported_with_the_step_they_settled():
    """A flat direction held only by the localization (relaxation 1 / (eps gamma) = 1000 steps) and
    no burn-in: the chains spread from w* for ~2000 steps, so the mean score settles late."""
    objective = Quadratic([1e-6] * 20)
    result = estimate_llc_of(objective, {"w": np.zeros(20)}, step_size=1e-3, nbeta=1e4, localization=1.0,
                             num_chains=8, num_draws=4000, num_burnin_steps=0, batch_size=None, mala_every=0)
    assert result.diagnostics["settling_step"] > 500
    assert any("still settling after burn-in" in w for w in result.diagnostics["warnings"])


def test_a_non_finite_full_data_score_stops_the_estimate_naming_the_chain_and_the_draw():
    class FullLossFails(Quadratic):
        """Minibatch losses stay finite; the whole data set's loss is inf away from w* (after the first call)."""

        def __init__(self):
            super().__init__(np.ones(2))
            self.calls = 0

        def loss(self, params, indices=None):
            self.calls += 1
            return float("inf") if indices is None and self.calls > 1 else super().loss(params)

        def loss_and_grad(self, params, indices=None):
            return float(0.5 * np.sum(params["w"] ** 2)), {"w": params["w"].copy()}

    with pytest.raises(LLCDiverged, match=r"chain 0, burn-in step 0: the score \(full\) became non-finite"):
        estimate_llc_of(FullLossFails(), {"w": np.zeros(2)}, step_size=1e-3, nbeta=10.0, localization=1.0, num_chains=2,
                        num_draws=5, num_burnin_steps=2, batch_size=None, score="full", mala_every=0)


def test_a_mask_of_fractions_is_refused():
    cfg, params, batch = _lsa_problem()
    fractions = {name: np.full(p.shape, 0.5) for name, p in params.items()}
    with pytest.raises(ValueError, match="must hold booleans"):
        estimate_llc("numpy", cfg, params, batch, num_chains=1, num_draws=2, num_burnin_steps=0, restrict=fractions)
