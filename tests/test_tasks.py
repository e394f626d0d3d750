"""LinearRegressionTask.sample, as a specification.

A task is ``w ~ N(0, w_scale^2 I_d)``, inputs ``x ~ U(-a, a)^d`` (or another law of the same
second moment a^2 / 3 per coordinate, ``x_distribution``) and labels ``y = w . x + noise``;
a batch holds tokens (B, N + 1, d + 1) = [(x_1, y_1), ..., (x_N, y_N), (x_q, 0)], targets (B,) = y_q
and weights (B, d) = w.  Each test below states one claim in its name.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import iclgd
from iclgd import LinearRegressionTask
from iclgd.config import ConfigError, load_run_config, run_config_to_toml
from iclgd.tasks import X_DISTRIBUTIONS

FAST = settings(max_examples=25, deadline=None)
FEW = settings(max_examples=5, deadline=None)

dims = st.integers(min_value=1, max_value=6)
contexts = st.integers(min_value=1, max_value=8)
batch_sizes = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
dtypes = st.sampled_from(["float32", "float64"])
scales = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)

# float64 labels are computed as w . x; re-computing them in a test may differ in the last bits
EXACT = dict(rtol=1e-12, atol=1e-12)


def split(batch: iclgd.Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Context inputs (B, N, d), context labels (B, N), query input (B, d), query y-slot (B,)."""
    tokens = batch.tokens
    return tokens[:, :-1, :-1], tokens[:, :-1, -1], tokens[:, -1, :-1], tokens[:, -1, -1]


def same_batch(first: iclgd.Batch, second: iclgd.Batch) -> bool:
    return all(
        a.dtype == b.dtype and np.array_equal(a, b)
        for a, b in zip((first.tokens, first.targets, first.weights), (second.tokens, second.targets, second.weights))
    )


# --- shapes and dtypes ------------------------------------------------------------------------


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, dtype=dtypes, seed=seeds)
def test_batch_has_shapes_tokens_B_N1_d1_targets_B_weights_B_d(d, n_context, batch_size, dtype, seed):
    batch = LinearRegressionTask(d=d, n_context=n_context, dtype=dtype).sample(batch_size, seed)
    assert batch.tokens.shape == (batch_size, n_context + 1, d + 1)
    assert batch.targets.shape == (batch_size,)
    assert batch.weights.shape == (batch_size, d)


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, seed=seeds)
def test_batch_reports_its_batch_size_n_context_and_d(d, n_context, batch_size, seed):
    batch = LinearRegressionTask(d=d, n_context=n_context).sample(batch_size, seed)
    assert (batch.batch_size, batch.n_context, batch.d) == (batch_size, n_context, d)


def test_default_dtype_is_float64():
    task = LinearRegressionTask(d=3, n_context=4)
    batch = task.sample(batch_size=2, seed=0)
    assert task.dtype == "float64"
    assert {batch.tokens.dtype, batch.targets.dtype, batch.weights.dtype} == {np.dtype(np.float64)}


@FAST
@given(dtype=dtypes, seed=seeds)
def test_every_array_of_the_batch_has_the_tasks_dtype(dtype, seed):
    batch = LinearRegressionTask(d=3, n_context=4, dtype=dtype).sample(batch_size=3, seed=seed)
    assert {batch.tokens.dtype, batch.targets.dtype, batch.weights.dtype} == {np.dtype(dtype)}


@pytest.mark.parametrize("dtype", [np.float32, np.dtype("float32")])
def test_dtype_may_be_given_as_a_numpy_dtype_and_is_stored_by_name(dtype):
    assert LinearRegressionTask(d=2, n_context=2, dtype=dtype).dtype == "float32"


# --- token layout and labels ------------------------------------------------------------------


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, seed=seeds)
def test_query_token_comes_last_with_a_zero_label_slot(d, n_context, batch_size, seed):
    batch = LinearRegressionTask(d=d, n_context=n_context).sample(batch_size, seed)
    _, _, x_query, query_label_slot = split(batch)
    assert np.all(query_label_slot == 0.0)
    # the last token is the query: its input is the one whose label is the target
    np.testing.assert_allclose(batch.targets, np.einsum("bd,bd->b", batch.weights, x_query), **EXACT)


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, seed=seeds)
def test_context_labels_equal_w_dot_x_without_noise(d, n_context, batch_size, seed):
    batch = LinearRegressionTask(d=d, n_context=n_context, noise_std=0.0).sample(batch_size, seed)
    x_context, y_context, _, _ = split(batch)
    np.testing.assert_allclose(y_context, np.einsum("bnd,bd->bn", x_context, batch.weights), **EXACT)


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, seed=seeds)
def test_targets_equal_w_dot_x_query_without_noise(d, n_context, batch_size, seed):
    batch = LinearRegressionTask(d=d, n_context=n_context, noise_std=0.0).sample(batch_size, seed)
    _, _, x_query, _ = split(batch)
    np.testing.assert_allclose(batch.targets, np.einsum("bd,bd->b", x_query, batch.weights), **EXACT)


@FAST
@given(w_scale=st.floats(min_value=0.0, max_value=100.0), seed=seeds)
def test_w_scale_multiplies_the_weights_drawn_from_the_same_seed(w_scale, seed):
    unit = LinearRegressionTask(d=4, n_context=3).sample(batch_size=5, seed=seed)
    scaled = LinearRegressionTask(d=4, n_context=3, w_scale=w_scale).sample(batch_size=5, seed=seed)
    np.testing.assert_allclose(scaled.weights, w_scale * unit.weights, rtol=1e-15, atol=0)


# --- reproducibility --------------------------------------------------------------------------


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, dtype=dtypes, seed=seeds)
def test_same_seed_gives_the_same_batch(d, n_context, batch_size, dtype, seed):
    task = LinearRegressionTask(d=d, n_context=n_context, dtype=dtype, noise_std=0.1, n_distractors=n_context // 2)
    assert same_batch(task.sample(batch_size, seed), task.sample(batch_size, seed))


@FAST
@given(seed=seeds)
def test_an_int_seed_means_a_fresh_default_rng_of_that_seed(seed):
    task = LinearRegressionTask(d=3, n_context=5)
    assert same_batch(task.sample(4, seed), task.sample(4, np.random.default_rng(seed)))


@FAST
@given(seed=seeds)
def test_a_generator_is_accepted_and_advances_so_two_calls_differ(seed):
    task = LinearRegressionTask(d=3, n_context=5)
    rng = np.random.default_rng(seed)
    first, second = task.sample(4, rng), task.sample(4, rng)
    assert not np.array_equal(first.tokens, second.tokens)
    assert not np.array_equal(first.weights, second.weights)


@FAST
@given(seeds=st.lists(seeds, min_size=2, max_size=2, unique=True))
def test_different_seeds_give_different_batches(seeds):
    task = LinearRegressionTask(d=3, n_context=5)
    first, second = (task.sample(4, seed) for seed in seeds)
    assert not np.array_equal(first.tokens, second.tokens)
    assert not np.array_equal(first.weights, second.weights)


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, seed=seeds, noise_std=st.sampled_from([0.0, 0.3]))
def test_float32_batch_is_the_float64_batch_cast_to_float32(d, n_context, batch_size, seed, noise_std):
    kwargs = dict(d=d, n_context=n_context, noise_std=noise_std, n_distractors=n_context // 2)
    wide = LinearRegressionTask(dtype="float64", **kwargs).sample(batch_size, seed)
    narrow = LinearRegressionTask(dtype="float32", **kwargs).sample(batch_size, seed)
    for name in ("tokens", "targets", "weights"):
        expected = getattr(wide, name).astype(np.float32)
        actual = getattr(narrow, name)
        assert actual.dtype == np.float32
        assert np.array_equal(actual, expected), name


# --- input range ------------------------------------------------------------------------------


@FAST
@given(x_scale=scales, d=dims, n_context=contexts, seed=seeds)
def test_every_input_lies_within_minus_a_to_a(x_scale, d, n_context, seed):
    batch = LinearRegressionTask(d=d, n_context=n_context, x_scale=x_scale).sample(batch_size=8, seed=seed)
    inputs = batch.tokens[:, :, :-1]  # context and query inputs
    assert np.all(np.abs(inputs) <= x_scale)


@FAST
@given(x_scale=scales, seed=seeds)
def test_inputs_fill_the_interval_minus_a_to_a(x_scale, seed):
    # 64 * 11 * 5 = 3520 draws: P(all |x| < 0.9 a) = 0.9^3520, P(no x < 0) = 2^-3520
    inputs = LinearRegressionTask(d=5, n_context=10, x_scale=x_scale).sample(64, seed).tokens[:, :, :-1]
    assert np.max(np.abs(inputs)) > 0.9 * x_scale
    assert inputs.min() < 0 < inputs.max()


def test_default_input_range_is_the_papers_a_equal_1():
    task = LinearRegressionTask(d=5, n_context=10)
    assert task.x_scale == 1.0
    assert task == LinearRegressionTask(d=5, n_context=10, x_scale="paper")
    inputs = task.sample(64, seed=0).tokens[:, :, :-1]
    assert np.all(np.abs(inputs) <= 1.0) and np.max(np.abs(inputs)) > 0.9


def test_authors_code_input_range_is_a_equal_one_half():
    by_name = LinearRegressionTask(d=5, n_context=10, x_scale="authors_code")
    assert by_name.x_scale == 0.5
    inputs = by_name.sample(64, seed=0).tokens[:, :, :-1]
    assert np.all(np.abs(inputs) <= 0.5) and np.max(np.abs(inputs)) > 0.45


def test_authors_code_constructor_is_the_task_with_x_scale_authors_code():
    task = LinearRegressionTask.authors_code(d=5, n_context=7, noise_std=0.25)
    assert task.x_scale == 0.5
    assert task == LinearRegressionTask(d=5, n_context=7, noise_std=0.25, x_scale="authors_code")
    assert same_batch(
        task.sample(3, seed=11), LinearRegressionTask(d=5, n_context=7, noise_std=0.25, x_scale=0.5).sample(3, seed=11)
    )


# --- label noise ------------------------------------------------------------------------------


@FEW
@given(noise_std=st.floats(min_value=0.05, max_value=3.0), seed=seeds)
def test_label_noise_has_sample_std_close_to_noise_std(noise_std, seed):
    # 2000 tasks x 6 labels = 12000 residuals: the sample std's relative error is ~0.65 %,
    # so a 10 % tolerance is more than 15 standard errors away.
    task = LinearRegressionTask(d=3, n_context=5, noise_std=noise_std)
    batch = task.sample(batch_size=2000, seed=seed)
    x_context, y_context, x_query, _ = split(batch)
    residual_context = y_context - np.einsum("bnd,bd->bn", x_context, batch.weights)
    residual_query = batch.targets - np.einsum("bd,bd->b", x_query, batch.weights)
    residuals = np.concatenate([residual_context.ravel(), residual_query])
    assert np.all(residuals != 0.0)
    assert abs(residuals.std() / noise_std - 1.0) < 0.1
    assert abs(residuals.mean()) < 0.1 * noise_std  # ~15 standard errors of the mean


@FEW
@given(seed=seeds)
def test_query_target_carries_label_noise_too(seed):
    batch = LinearRegressionTask(d=3, n_context=5, noise_std=0.5).sample(batch_size=2000, seed=seed)
    residual = batch.targets - np.einsum("bd,bd->b", split(batch)[2], batch.weights)
    assert abs(residual.std() / 0.5 - 1.0) < 0.15  # 2000 draws: ~1.6 % standard error


# --- distractors ------------------------------------------------------------------------------


def distractor_mask(batch: iclgd.Batch) -> np.ndarray:
    """(B, N) True where a context label is not w . x_i."""
    x_context, y_context, _, _ = split(batch)
    clean = np.einsum("bnd,bd->bn", x_context, batch.weights)
    return ~np.isclose(y_context, clean, rtol=1e-12, atol=1e-12)


@FAST
@given(data=st.data(), d=dims, n_context=contexts, seed=seeds)
def test_exactly_n_distractors_context_labels_per_task_differ_from_w_dot_x(data, d, n_context, seed):
    n_distractors = data.draw(st.integers(min_value=0, max_value=n_context), label="n_distractors")
    task = LinearRegressionTask(d=d, n_context=n_context, n_distractors=n_distractors)
    mask = distractor_mask(task.sample(batch_size=16, seed=seed))
    assert np.all(mask.sum(axis=1) == n_distractors)


@FAST
@given(data=st.data(), n_context=contexts, seed=seeds)
def test_distractors_leave_the_query_target_untouched(data, n_context, seed):
    n_distractors = data.draw(st.integers(min_value=0, max_value=n_context), label="n_distractors")
    batch = LinearRegressionTask(d=3, n_context=n_context, n_distractors=n_distractors).sample(16, seed)
    _, _, x_query, query_label_slot = split(batch)
    np.testing.assert_allclose(batch.targets, np.einsum("bd,bd->b", x_query, batch.weights), **EXACT)
    assert np.all(query_label_slot == 0.0)


@FAST
@given(seed=seeds)
def test_distractor_positions_vary_from_task_to_task(seed):
    # 200 tasks, one distractor among 10 positions: all at one position has probability 10^-199
    mask = distractor_mask(LinearRegressionTask(d=3, n_context=10, n_distractors=1).sample(200, seed))
    assert len(set(np.argmax(mask, axis=1).tolist())) > 1


# --- input distributions ----------------------------------------------------------------------

#: Raw moments E[x^k] of one input coordinate for a = 1, k = 1, 2, 4, 8, written out per law
#: (uniform: a^k / (k + 1) for even k; N(0, s^2): (k - 1)!! s^k; Laplace(0, b): k! b^k for even k;
#: s Exp(1): k! s^k), with s^2 = 1/3 (gaussian) and b^2 = s^2 = 1/6 (laplace, exponential).
MOMENTS = {
    "uniform": {1: 0.0, 2: 1 / 3, 4: 1 / 5, 8: 1 / 9},
    "gaussian": {1: 0.0, 2: 1 / 3, 4: 3 / 9, 8: 105 / 81},
    "laplace": {1: 0.0, 2: 2 / 6, 4: 24 / 36, 8: 40320 / 1296},
    "exponential": {1: 1 / np.sqrt(6), 2: 2 / 6, 4: 24 / 36, 8: 40320 / 1296},
}
distributions = st.sampled_from(sorted(X_DISTRIBUTIONS))


def inputs_of(batch: iclgd.Batch) -> np.ndarray:
    """Every input coordinate of the batch, context and query, as (samples, d)."""
    return batch.tokens[:, :, :-1].reshape(-1, batch.d)


def z_score(samples: np.ndarray, power: int, moments: dict, scale: float) -> np.ndarray:
    """(sample mean of x^power - E[x^power]) / its exact standard error, per column."""
    mean = moments[power] * scale**power
    variance = (moments[2 * power] - moments[power] ** 2) * scale ** (2 * power)
    return (np.mean(samples**power, axis=0) - mean) / np.sqrt(variance / samples.shape[0])


def test_the_four_input_distributions_are_uniform_gaussian_exponential_laplace():
    assert set(X_DISTRIBUTIONS) == {"uniform", "gaussian", "exponential", "laplace"}
    assert LinearRegressionTask().x_distribution == "uniform"


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, x_scale=scales, seed=seeds)
def test_uniform_inputs_are_drawn_by_rng_uniform_right_after_the_weights(d, n_context, batch_size, x_scale, seed):
    # pins the draw order of every existing seed: w = standard_normal, then x = uniform(-a, a)
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((batch_size, d))
    x = rng.uniform(-x_scale, x_scale, size=(batch_size, n_context + 1, d))
    batch = LinearRegressionTask(d=d, n_context=n_context, x_scale=x_scale).sample(batch_size, seed)
    assert np.array_equal(batch.weights, weights)
    assert np.array_equal(batch.tokens[:, :, :-1], x)


@FAST
@given(d=dims, x_scale=scales, distribution=distributions, seed=seeds)
def test_every_input_distribution_has_second_moment_a_squared_over_3_per_coordinate(d, x_scale, distribution, seed):
    task = LinearRegressionTask(d=d, n_context=9, x_scale=x_scale, x_distribution=distribution)
    x = inputs_of(task.sample(200, seed))  # 2000 draws per coordinate
    assert np.all(np.abs(z_score(x, 2, MOMENTS[distribution], x_scale)) < 5)


@FAST
@given(d=dims, x_scale=scales, seed=seeds)
def test_exponential_inputs_are_non_negative_with_mean_a_over_sqrt_6(d, x_scale, seed):
    task = LinearRegressionTask(d=d, n_context=9, x_scale=x_scale, x_distribution="exponential")
    x = inputs_of(task.sample(200, seed))
    assert np.all(x >= 0)
    assert np.all(np.abs(z_score(x, 1, MOMENTS["exponential"], x_scale)) < 5)


@FAST
@given(d=dims, x_scale=scales, distribution=st.sampled_from(["uniform", "gaussian", "laplace"]), seed=seeds)
def test_uniform_gaussian_and_laplace_inputs_have_mean_zero_and_take_both_signs(d, x_scale, distribution, seed):
    task = LinearRegressionTask(d=d, n_context=9, x_scale=x_scale, x_distribution=distribution)
    x = inputs_of(task.sample(200, seed))
    assert np.all(np.abs(z_score(x, 1, MOMENTS[distribution], x_scale)) < 5)
    assert np.all(x.min(axis=0) < 0) and np.all(x.max(axis=0) > 0)


@pytest.mark.parametrize("distribution", sorted(X_DISTRIBUTIONS))
def test_each_input_distribution_has_the_fourth_moment_of_its_law(distribution):
    # same second moment, different shape: E[x^4] / a^4 = 1/5, 1/3, 2/3, 2/3 (z over 440,000 draws)
    x = inputs_of(LinearRegressionTask(d=4, n_context=10, x_distribution=distribution).sample(10_000, seed=1))
    assert abs(z_score(x.ravel()[:, None], 4, MOMENTS[distribution], 1.0)[0]) < 5


@FAST
@given(d=dims, n_context=contexts, batch_size=batch_sizes, distribution=distributions, dtype=dtypes, seed=seeds)
def test_same_seed_gives_the_same_batch_for_every_input_distribution(d, n_context, batch_size, distribution, dtype, seed):
    task = LinearRegressionTask(d=d, n_context=n_context, x_distribution=distribution, dtype=dtype,
                                noise_std=0.1, n_distractors=n_context // 2)
    assert same_batch(task.sample(batch_size, seed), task.sample(batch_size, seed))


@FAST
@given(distribution=distributions, seed=seeds)
def test_labels_are_w_dot_x_for_every_input_distribution(distribution, seed):
    batch = LinearRegressionTask(d=4, n_context=6, x_distribution=distribution).sample(8, seed)
    x_context, y_context, x_query, _ = split(batch)
    np.testing.assert_allclose(y_context, np.einsum("bnd,bd->bn", x_context, batch.weights), **EXACT)
    np.testing.assert_allclose(batch.targets, np.einsum("bd,bd->b", x_query, batch.weights), **EXACT)


@FAST
@given(distribution=distributions, seed=seeds)
def test_the_input_distribution_leaves_the_weights_of_a_seed_unchanged(distribution, seed):
    base = LinearRegressionTask(d=3, n_context=5).sample(4, seed)
    other = LinearRegressionTask(d=3, n_context=5, x_distribution=distribution).sample(4, seed)
    assert np.array_equal(base.weights, other.weights)


def test_a_toml_config_sets_the_input_distribution_and_writes_it_back(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[task]\nd = 3\nn_context = 4\nx_distribution = "laplace"\n')
    config = load_run_config(path)
    assert config.task.x_distribution == "laplace"
    path.write_text(run_config_to_toml(config))
    assert load_run_config(path) == config


def test_a_toml_config_with_an_unknown_input_distribution_names_the_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[task]\nx_distribution = "cauchy"\n')
    with pytest.raises(ConfigError, match=r"\[task\].*x_distribution must be one of.*'cauchy'"):
        load_run_config(path)


@pytest.mark.parametrize("distribution", ["gaussian", "exponential", "laplace"])
def test_numba_fused_sampling_draws_the_tasks_of_task_sample_for_every_input_distribution(distribution):
    pytest.importorskip("numba", reason="the numba backend needs the numba extra: pip install 'iclgd[numba]'")
    from iclgd.backends.training import batch_rng
    from iclgd.checks import relative_error

    cfg = iclgd.LSAConfig(d=4, n_layers=1, n_heads=1)
    params = iclgd.init_params(cfg, seed=0, scale=0.3)
    task = LinearRegressionTask(d=4, n_context=6, x_scale=0.7, x_distribution=distribution)
    fused = iclgd.get_backend("numba").sample_loss_and_grad(cfg, task, params, 64, batch_rng(5, 2))
    plain = iclgd.get_backend("numpy").sample_loss_and_grad(cfg, task, params, 64, batch_rng(5, 2))
    assert abs(fused[0] - plain[0]) <= 1e-9 * max(1.0, plain[0])
    assert relative_error(fused[1], plain[1]) <= 1e-9
