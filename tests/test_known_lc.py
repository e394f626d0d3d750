"""iclgd.analysis.known_lc: the models of known learning coefficient (their losses, hand-written
gradients against central differences, their minima), the Aoyagi-Watanabe closed form of reduced
rank regression against properties and cases derived independently of it, the step-size-exact
target of linear regression against the variance recursion it solves, and the quadrature of the
tempered target against closed forms.  The estimator itself is calibrated on these models in
test_llc_calibration.py."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from iclgd.analysis.known_lc import (
    LinearRegression,
    NormalCrossing,
    PowerPotential,
    ReducedRankRegression,
    rrr_learning_coefficient,
    rrr_multiplicity,
    tempered_llc,
)

coordinates = st.floats(-1.5, 1.5, allow_nan=False)


def central_difference(objective, params: dict, indices=None, h: float = 1e-6) -> dict:
    """d L / d p for every entry p of every parameter, by (L(p + h) - L(p - h)) / (2 h)."""
    out = {}
    for name, value in params.items():
        grad = np.zeros(value.shape)
        for i in np.ndindex(value.shape):
            up = {k: v.copy() for k, v in params.items()}
            down = {k: v.copy() for k, v in params.items()}
            up[name][i] += h
            down[name][i] -= h
            grad[i] = (objective.loss(up, indices) - objective.loss(down, indices)) / (2 * h)
        out[name] = grad
    return out


def assert_gradient_matches(objective, params: dict, indices=None) -> None:
    loss, grads = objective.loss_and_grad(params, indices)
    assert loss == pytest.approx(objective.loss(params, indices), rel=1e-12, abs=1e-15)
    numeric = central_difference(objective, params, indices)
    assert sorted(grads) == sorted(params)
    for name in params:
        assert grads[name].shape == params[name].shape
        scale = 1.0 + np.abs(numeric[name]).max()
        np.testing.assert_allclose(grads[name], numeric[name], rtol=1e-6, atol=1e-7 * scale, err_msg=name)


def flat(params: dict) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in params.values()])


# --- the objective interface ----------------------------------------------------------------------


MODELS = [PowerPotential(2), NormalCrossing((1, 2)), LinearRegression(3, 50), ReducedRankRegression(3, 2, 2, 1)]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_every_model_is_an_objective_with_a_learning_coefficient_and_a_point(model):
    assert model.n_positions is None and model.n_samples >= 1
    params = model.initial_params()
    assert all(v.dtype == np.float64 for v in params.values())
    loss, grads = model.loss_and_grad(params)
    assert isinstance(loss, float) and set(grads) == set(params)
    assert 0 < model.learning_coefficient <= flat(params).size / 2
    assert model.multiplicity >= 1


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_initial_params_is_a_critical_point_and_a_fresh_copy(model):
    params = model.initial_params()
    _, grads = model.loss_and_grad(params)
    assert max(np.abs(g).max() for g in grads.values()) < 1e-12
    for value in params.values():
        value += 1.0
    assert not np.array_equal(flat(model.initial_params()), flat(params))


@pytest.mark.parametrize("model", [PowerPotential(3), NormalCrossing((2, 1)), ReducedRankRegression(2, 2, 2, 1)],
                         ids=lambda m: type(m).__name__)
def test_models_without_data_ignore_the_minibatch(model):
    params = {k: v + 0.3 for k, v in model.initial_params().items()}
    assert model.loss(params, np.array([0, 5, 5])) == model.loss(params, None)


def test_an_overflowing_toy_loss_is_infinite_not_an_exception():
    loss, grads = PowerPotential(4).loss_and_grad({"w": np.array([1e300])})
    assert loss == math.inf and np.isnan(grads["w"]).all()
    assert NormalCrossing((1, 3)).loss({"w": np.array([2.0, 1e200])}) == math.inf


@pytest.mark.parametrize("bad", [dict(k=0), dict(k=1.5), dict(k=True)])
def test_power_potential_rejects_a_non_positive_integer_power(bad):
    with pytest.raises(ValueError, match="k must be an integer"):
        PowerPotential(**bad)


@pytest.mark.parametrize("powers", [(), (0, 0), (1, -1)])
def test_normal_crossing_needs_a_positive_power(powers):
    with pytest.raises(ValueError):
        NormalCrossing(powers)


# --- gradients against central differences ---------------------------------------------------------


@given(st.integers(1, 4), coordinates)
def test_power_potential_gradient_is_the_derivative(k, w):
    model = PowerPotential(k)
    assert model.loss({"w": np.array([w])}) == pytest.approx(w ** (2 * k), rel=1e-15, abs=1e-300)
    assert_gradient_matches(model, {"w": np.array([w])})


@given(st.lists(st.integers(0, 3), min_size=1, max_size=4).filter(lambda p: max(p) > 0), st.data())
def test_normal_crossing_gradient_is_the_derivative(powers, data):
    w = np.array(data.draw(st.lists(coordinates, min_size=len(powers), max_size=len(powers))))
    model = NormalCrossing(powers)
    assert model.loss({"w": w}) == pytest.approx(0.5 * np.prod(w ** (2 * np.array(powers))), rel=1e-12, abs=1e-300)
    assert_gradient_matches(model, {"w": w})


@given(st.integers(1, 5), seeds, st.floats(0.05, 2.0), st.booleans())
def test_linear_regression_gradient_is_the_derivative_on_all_rows_and_on_a_minibatch(d, seed, shift, minibatch):
    model = LinearRegression(d, 40, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    params = {"w": model.w_star + shift * rng.standard_normal(d)}
    indices = rng.integers(0, 40, size=7) if minibatch else None
    assert_gradient_matches(model, params, indices)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.data(), seeds)
def test_reduced_rank_regression_gradient_is_the_derivative(n_in, n_out, n_hidden, data, seed):
    true_rank = data.draw(st.integers(0, min(n_in, n_out, n_hidden)))
    model = ReducedRankRegression(n_in, n_out, n_hidden, true_rank, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    params = {k: v + 0.5 * rng.standard_normal(v.shape) for k, v in model.initial_params().items()}
    assert_gradient_matches(model, params)


# --- the vectorised losses --------------------------------------------------------------------------


@pytest.mark.parametrize("model", [PowerPotential(3), NormalCrossing((1, 2)), LinearRegression(2, 30),
                                   ReducedRankRegression(1, 1, 1, 1), ReducedRankRegression(2, 3, 2, 1)],
                         ids=lambda m: type(m).__name__)
@settings(max_examples=20)
@given(seed=seeds)
def test_loss_on_grid_is_the_loss_at_every_point(model, seed):
    center = model.initial_params()
    points = flat(center) + np.random.default_rng(seed).standard_normal((5, flat(center).size))
    expected = []
    for point in points:
        params, start = {}, 0
        for name, value in center.items():
            params[name] = point[start:start + value.size].reshape(value.shape)
            start += value.size
        expected.append(model.loss(params))
    np.testing.assert_allclose(model.loss_on_grid(points), expected, rtol=1e-12, atol=1e-14)


# --- linear regression ------------------------------------------------------------------------------


def test_linear_regression_draws_its_data_from_its_seed():
    a, b, c = LinearRegression(3, 20, seed=4), LinearRegression(3, 20, seed=4), LinearRegression(3, 20, seed=5)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y) and not np.array_equal(a.X, c.X)
    np.testing.assert_allclose(a.y, a.X @ a.w0 + (a.y - a.X @ a.w0))


def test_linear_regression_center_is_the_least_squares_solution():
    model = LinearRegression(4, 200, noise_std=0.5, seed=3)
    residual = model.y - model.X @ model.w_star
    np.testing.assert_allclose(model.X.T @ residual, 0.0, atol=1e-10)  # the normal equations
    assert np.abs(model.w_star - model.w0).max() < 0.2  # and it is near the truth at n = 200, noise 0.5


@given(seeds, st.integers(1, 4))
def test_linear_regression_full_loss_is_exactly_quadratic_around_the_center(seed, d):
    model = LinearRegression(d, 60, seed=seed % 100)
    delta = np.random.default_rng(seed).standard_normal(d)
    expected = model.loss(model.initial_params()) + 0.5 * delta @ model.hessian @ delta
    moved = {"w": model.w_star + delta}
    assert model.loss(moved) == pytest.approx(expected, rel=1e-12)
    assert model.loss(moved) == pytest.approx(model.loss(moved, np.arange(60)), rel=1e-12)  # all rows, named


@given(st.floats(0.1, 5.0), st.floats(0.01, 1.0), st.floats(1.0, 1e4), st.floats(0.0, 10.0))
def test_ula_stationary_variance_is_the_fixed_point_of_the_variance_recursion(h, fraction, nbeta, gamma):
    # along one eigenvector: z' = (1 - eps a / 2) z + sqrt(eps) xi, so v' = (1 - eps a / 2)^2 v + eps;
    # iterate from v = 0 (the chain starts at w*) until it stops moving
    a = nbeta * h + gamma
    eps = fraction * 3.0 / a  # eps a in (0, 3]: stable (|1 - eps a / 2| < 1)
    v, rho2 = 0.0, (1 - eps * a / 2) ** 2
    for _ in range(100_000):
        v_next = rho2 * v + eps
        if abs(v_next - v) <= 1e-15 * v_next:
            break
        v = v_next
    assert v == pytest.approx(1 / (a * (1 - eps * a / 4)), rel=1e-10)


def test_exact_tempered_llc_is_the_sum_of_the_eigen_directions_fixed_points():
    model = LinearRegression(3, 100, seed=2)
    nbeta, gamma, eps = 50.0, 2.0, 1e-2
    h, vectors = np.linalg.eigh(model.hessian)
    a = nbeta * h + gamma
    v = np.zeros(3)
    for _ in range(20_000):  # the variance recursion, eigendirection by eigendirection
        v = (1 - eps * a / 2) ** 2 * v + eps
    assert model.exact_tempered_llc(nbeta, gamma, eps) == pytest.approx(0.5 * np.sum(nbeta * h * v), rel=1e-12)
    assert model.exact_tempered_llc(nbeta, gamma) == pytest.approx(0.5 * np.sum(nbeta * h / a), rel=1e-14)
    assert model.exact_tempered_llc(nbeta, gamma, eps) > model.exact_tempered_llc(nbeta, gamma)  # ULA overdisperses


def test_exact_tempered_llc_is_the_stationary_mean_of_simulated_full_batch_sgld():
    # 20000 independent chains of the SGLD step itself (vectorised here, with L's gradient H (w - w*)),
    # run 400 steps (eps a_min >= 0.3: the transient is below e^-100): the mean of nbeta (L - L*) over
    # the chains matches the step-size-exact target within 4 standard errors, and differs from the
    # eps -> 0 target by more than that
    model = LinearRegression(2, 500, seed=7)
    nbeta, gamma, eps = 100.0, 1.0, 0.01
    rng = np.random.default_rng(0)
    z = np.zeros((20_000, 2))
    for _ in range(400):
        z = z - 0.5 * eps * (nbeta * z @ model.hessian + gamma * z) + math.sqrt(eps) * rng.standard_normal(z.shape)
    scores = 0.5 * nbeta * np.einsum("ci,ij,cj->c", z, model.hessian, z)
    stderr = scores.std(ddof=1) / math.sqrt(scores.size)
    assert abs(scores.mean() - model.exact_tempered_llc(nbeta, gamma, eps)) < 4 * stderr
    assert abs(scores.mean() - model.exact_tempered_llc(nbeta, gamma)) > 4 * stderr


def test_exact_tempered_llc_rejects_an_unstable_step_and_tends_to_d_over_2():
    model = LinearRegression(4, 300, seed=1)
    h_max = np.linalg.eigvalsh(model.hessian).max()
    with pytest.raises(ValueError, match="unstable"):
        model.exact_tempered_llc(100.0, 1.0, 4.0 / (100.0 * h_max + 1.0))
    values = [model.exact_tempered_llc(nbeta, 1.0) for nbeta in (1e1, 1e3, 1e5, 1e7)]
    assert all(a < b < 2.0 for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(2.0, rel=1e-6)


# --- reduced rank regression: the model -------------------------------------------------------------


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.data(), seeds)
def test_rrr_center_has_true_rank_generic_units_and_zero_others(n_in, n_out, n_hidden, data, seed):
    r = data.draw(st.integers(0, min(n_in, n_out, n_hidden)))
    model = ReducedRankRegression(n_in, n_out, n_hidden, r, seed=seed % 1000)
    a, b = model.A0, model.B0
    assert a.shape == (n_hidden, n_in) and b.shape == (n_out, n_hidden)
    assert not a[r:].any() and not b[:, r:].any()
    np.testing.assert_allclose(np.linalg.norm(a[:r], axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(b[:, :r], axis=0), 1.0)
    assert np.linalg.matrix_rank(b @ a) == r
    assert model.loss(model.initial_params()) == 0.0


@given(seeds)
def test_rrr_loss_is_invariant_under_the_hidden_units_change_of_basis(seed):
    rng = np.random.default_rng(seed)
    model = ReducedRankRegression(3, 2, 3, 1, seed=seed % 1000)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((2, 3))
    g = rng.standard_normal((3, 3)) + 3 * np.eye(3)  # invertible
    moved = model.loss({"A": g @ a, "B": b @ np.linalg.inv(g)})
    assert moved == pytest.approx(model.loss({"A": a, "B": b}), rel=1e-9)


@given(st.floats(-2, 2), st.floats(-2, 2))
def test_rrr_with_one_unit_and_true_rank_0_is_the_normal_crossing_1_1(a, b):
    # (1/2) (b a)^2 = (1/2) a^2 b^2: the same function, so the same learning coefficient and multiplicity
    rrr, crossing = ReducedRankRegression(1, 1, 1, 0), NormalCrossing((1, 1))
    value = rrr.loss({"A": np.array([[a]]), "B": np.array([[b]])})
    assert value == pytest.approx(crossing.loss({"w": np.array([a, b])}), rel=1e-14, abs=1e-300)
    assert (rrr.learning_coefficient, rrr.multiplicity) == (crossing.learning_coefficient, crossing.multiplicity) == (0.5, 2)


def test_rrr_rejects_a_true_rank_above_the_dimensions():
    with pytest.raises(ValueError, match="true_rank must be at most"):
        ReducedRankRegression(3, 2, 2, 3)
    with pytest.raises(ValueError, match="true_rank must be at most"):
        rrr_learning_coefficient(2, 4, 1, 2)


# --- reduced rank regression: the learning coefficient ------------------------------------------------

dims = st.integers(1, 12)


@st.composite
def rrr_shapes(draw):
    m, n, h = draw(dims), draw(dims), draw(dims)
    return m, n, h, draw(st.integers(0, min(m, n, h)))


@given(dims, dims, st.data())
def test_rrr_at_full_true_rank_is_half_the_dimension_of_rank_h_matrices(m, n, data):
    # r = H <= min(M, N): the true set {B A = C0} is a GL(H)-orbit, a manifold of dimension H^2,
    # so the model is regular modulo it: lambda = (H (M + N) - H^2) / 2, the dimension of the
    # N x M matrices of rank H over 2
    h = data.draw(st.integers(1, min(m, n)))
    assert rrr_learning_coefficient(m, n, h, h) == h * (m + n - h) / 2
    assert rrr_multiplicity(m, n, h, h) == 1


@given(dims, dims)
def test_rrr_with_one_hidden_unit_at_zero_is_half_the_smaller_dimension(m, n):
    # H = 1, r = 0: L = (1/2) |a|^2 |b|^2; in polar coordinates a = s u, b = t v the volume is
    # s^(M-1) t^(N-1) ds dt and L = s^2 t^2 / 2: lambda = min(M, N) / 2, multiplicity 2 when M = N
    assert rrr_learning_coefficient(m, n, 1, 0) == min(m, n) / 2
    assert rrr_multiplicity(m, n, 1, 0) == (2 if m == n else 1)


@given(rrr_shapes())
def test_rrr_learning_coefficient_is_symmetric_in_inputs_and_outputs(shape):
    m, n, h, r = shape
    assert rrr_learning_coefficient(m, n, h, r) == rrr_learning_coefficient(n, m, h, r)
    assert rrr_multiplicity(m, n, h, r) == rrr_multiplicity(n, m, h, r)


@given(rrr_shapes())
def test_rrr_learning_coefficient_is_at_most_half_the_parameters_and_half_the_matrix_entries(shape):
    m, n, h, r = shape
    value = rrr_learning_coefficient(m, n, h, r)
    assert 0 < value <= h * (m + n) / 2 and value <= m * n / 2
    assert (8 * value).is_integer()  # a multiple of 1/8


@given(rrr_shapes())
def test_rrr_learning_coefficient_grows_with_the_true_rank_until_it_saturates(shape):
    m, n, h, r = shape
    if r < min(m, n, h):
        before, after = rrr_learning_coefficient(m, n, h, r), rrr_learning_coefficient(m, n, h, r + 1)
        assert after > before or before == after == m * n / 2


@given(rrr_shapes())
def test_rrr_learning_coefficient_does_not_fall_with_more_hidden_units(shape):
    m, n, h, r = shape
    assert rrr_learning_coefficient(m, n, h + 1, r) >= rrr_learning_coefficient(m, n, h, r)


@given(rrr_shapes())
def test_rrr_cases_agree_on_their_boundaries(shape):
    # where case 1's inequalities hold with equality the neighbouring case's formula gives the same value
    m, n, h, r = shape
    value = rrr_learning_coefficient(m, n, h, r)
    if m + h == n + r and m + r <= n + h and h + r <= m + n:
        assert value == (h * m - h * r + n * r) / 2
    if n + h == m + r and n + r <= m + h and h + r <= m + n:
        assert value == (h * n - h * r + m * r) / 2
    if m + n == h + r and n + r <= m + h and m + r <= n + h:
        assert value == m * n / 2


# Drton & Plummer (2017), "A Bayesian information criterion for singular models", JRSS B 79:1-38,
# Table 1: the learning coefficients of reduced rank regression with N = 5 responses and M = 3
# covariates, model rank H = i, true rank r = j (values as tabulated there, from Aoyagi & Watanabe)
DRTON_PLUMMER = {(1, 0): 3 / 2, (1, 1): 7 / 2, (2, 0): 3, (2, 1): 9 / 2, (2, 2): 6,
                 (3, 0): 9 / 2, (3, 1): 11 / 2, (3, 2): 13 / 2, (3, 3): 15 / 2}


@pytest.mark.parametrize(("h", "r"), sorted(DRTON_PLUMMER))
def test_rrr_learning_coefficient_reproduces_drton_and_plummers_table(h, r):
    assert rrr_learning_coefficient(3, 5, h, r) == DRTON_PLUMMER[h, r]


@pytest.mark.parametrize(("shape", "value", "multiplicity"), [
    ((2, 2, 2, 0), 3 / 2, 1),   # case 1, M + N + H + r even: [2*2*4 - 0 - 4] / 8
    ((3, 3, 2, 1), 7 / 2, 2),   # case 1, odd: [2*3*6 - 0 - 9 + 1] / 8
    ((1, 4, 2, 1), 2, 1),       # case 2, M + H < N + r: (2 - 2 + 4) / 2
    ((4, 1, 2, 1), 2, 1),       # case 3, N + H < M + r
    ((1, 1, 3, 1), 1 / 2, 1),   # case 4, M + N < H + r: M N / 2
])
def test_rrr_learning_coefficient_by_hand_in_each_case(shape, value, multiplicity):
    assert rrr_learning_coefficient(*shape) == value
    assert rrr_multiplicity(*shape) == multiplicity


# --- the tempered target by quadrature --------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("nbeta", [3.0, 145.0, 1e4])
def test_tempered_llc_of_the_power_potential_without_localization_is_1_over_2k(k, nbeta):
    # u = nbeta w^(2k) under exp(-nbeta w^(2k)) is Gamma(1/(2k), 1): E[u] = 1/(2k) at every nbeta
    half_width = (40.0 / nbeta) ** (1 / (2 * k))
    assert tempered_llc(PowerPotential(k), nbeta, 0.0, half_width, 4001) == pytest.approx(1 / (2 * k), rel=1e-6)


@pytest.mark.parametrize(("nbeta", "gamma"), [(1.0, 1.0), (145.0, 1.0), (145.0, 300.0), (1e4, 30.0)])
def test_tempered_llc_of_a_quadratic_is_half_nbeta_h_over_nbeta_h_plus_gamma(nbeta, gamma):
    model = LinearRegression(1, 50, seed=3)
    h = float(model.hessian[0, 0])
    half_width = 12 / math.sqrt(nbeta * h + gamma)
    expected = 0.5 * nbeta * h / (nbeta * h + gamma)
    assert tempered_llc(model, nbeta, gamma, half_width, 2001) == pytest.approx(expected, rel=1e-9)


def test_tempered_llc_in_two_dimensions_is_linear_regressions_gaussian_target():
    model = LinearRegression(2, 40, seed=5)
    nbeta, gamma = 30.0, 2.0
    expected = model.exact_tempered_llc(nbeta, gamma)
    assert tempered_llc(model, nbeta, gamma, 12 / math.sqrt(nbeta * 0.3 + gamma), 801) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize(("nbeta", "gamma"), [(144.76, 0.4), (144.76, 1.0), (1e3, 3.0)])
def test_tempered_llc_of_the_normal_crossing_is_its_one_dimensional_reduction(nbeta, gamma):
    # given w1, w2 is Gaussian with precision s + gamma, s = nbeta w1^2, and E[(nbeta/2) w1^2 w2^2 | w1] =
    # (1/2) s / (s + gamma); w1's marginal is ∝ exp(-gamma w1^2 / 2) (s + gamma)^(-1/2): one fine 1-D sum
    w1 = np.linspace(-12 / math.sqrt(gamma), 12 / math.sqrt(gamma), 400_001)
    s = nbeta * w1**2
    log_density = -0.5 * gamma * w1**2 - 0.5 * np.log(s + gamma)
    density = np.exp(log_density - log_density.max())
    expected = float(density @ (0.5 * s / (s + gamma)) / density.sum())
    assert tempered_llc(NormalCrossing((1, 1)), nbeta, gamma, 7 / math.sqrt(gamma), 1201) == pytest.approx(expected, rel=1e-6)


def test_tempered_llc_of_the_issues_normal_crossing_is_about_0_38():
    # NormalCrossing((1, 1)) at nbeta = n / log n, n = 1000 (144.76), localization 0.4: 0.3799
    assert tempered_llc(NormalCrossing((1, 1)), 1000 / math.log(1000), 0.4, 11.0, 1201) == pytest.approx(0.3799, abs=1e-4)


def test_tempered_llc_converges_with_the_grid():
    model, nbeta, gamma = NormalCrossing((1, 2)), 300.0, 1.0
    values = [tempered_llc(model, nbeta, gamma, 7.0, n) for n in (251, 501, 1001)]
    assert abs(values[2] - values[1]) < 0.2 * abs(values[1] - values[0]) and abs(values[2] - values[1]) < 1e-3


def test_tempered_llc_uses_the_loss_where_there_is_no_vectorised_loss():
    class PointByPoint:
        """PowerPotential(2) without loss_on_grid."""

        def __init__(self):
            self.model = PowerPotential(2)

        def initial_params(self):
            return self.model.initial_params()

        def loss(self, params, indices=None):
            return self.model.loss(params, indices)

    vectorised = tempered_llc(PowerPotential(2), 100.0, 3.0, 1.2, 301)
    assert tempered_llc(PointByPoint(), 100.0, 3.0, 1.2, 301) == pytest.approx(vectorised, rel=1e-13)


def test_tempered_llc_tends_to_the_learning_coefficient_as_nbeta_grows():
    # the power potential w^4 with localization 1: lambda = 1/4, approached from below
    model = PowerPotential(2)
    values = [tempered_llc(model, nbeta, 1.0, 2.0 * nbeta ** -0.25 + 0.5, 4001) for nbeta in (1e1, 1e2, 1e3, 1e4, 1e5)]
    gaps = [0.25 - v for v in values]
    assert all(g > 0 for g in gaps) and all(b < a for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 2e-3


def ula_stationary_mean_on_a_grid(k: int, nbeta: float, gamma: float, step: float, half_width: float, n: int) -> float:
    """The exact stationary mean of nbeta w^(2k) under full-batch SGLD on PowerPotential(k): the
    chain's transition w -> N(w - (eps/2) U'(w), eps) on n grid points (rows normalised), and
    its stationary vector p = p K, sum p = 1, by a linear solve."""
    w = half_width * ((2 * np.arange(n) + 1) / n - 1)
    drift = w - 0.5 * step * (2 * k * nbeta * w ** (2 * k - 1) + gamma * w)
    kernel = np.exp(-((w[None, :] - drift[:, None]) ** 2) / (2 * step))
    kernel /= kernel.sum(axis=1, keepdims=True)
    system = kernel.T - np.eye(n)
    system[-1] = 1.0  # replace one (redundant) balance equation by the normalisation
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    p = np.linalg.solve(system, rhs)
    return float(p @ (nbeta * w ** (2 * k)))


@pytest.mark.parametrize("step", [5e-4, 1e-3])
def test_tempered_llc_step_correction_is_the_first_order_bias_of_the_chain(step):
    # w^4, nbeta = 145, gamma = 1: the chain's exact stationary mean (a transfer operator on a grid)
    # exceeds the tempered target by ~3.1 eps; the first-order correction accounts for it up to
    # O(eps^2): the remainder is below 6 % of the bias at eps = 1e-3 and shrinks with eps
    model, nbeta, gamma = PowerPotential(2), 145.0, 1.0
    exact = tempered_llc(model, nbeta, gamma, 1.5, 4001)
    corrected = tempered_llc(model, nbeta, gamma, 1.5, 4001, step_size=step)
    chain = ula_stationary_mean_on_a_grid(2, nbeta, gamma, step, 1.5, 1201)
    assert chain - exact > 2.5 * step  # the bias is real and positive
    assert abs(chain - corrected) < 0.06 * (chain - exact) * (step / 1e-3)


def test_tempered_llc_refuses_a_box_that_cuts_off_the_density_and_models_it_cannot_grid():
    with pytest.raises(ValueError, match="half_width"):
        tempered_llc(NormalCrossing((1, 1)), 145.0, 0.01, 3.0, 501)
    with pytest.raises(ValueError, match="1 or 2 parameters"):
        tempered_llc(NormalCrossing((1, 1, 1)), 145.0, 1.0, 3.0, 51)
