"""NoisyRegressionTask (iclgd.tasks.noisy): the developmental-landscape paper's task family.

x ~ N(0, x_scale^2 I_d), y = w . x + eps with eps ~ N(0, sigma^2), and w fresh from N(0, I_d)
(n_tasks = None) or drawn uniformly from a fixed pool of M vectors.  Statistical claims use
6 standard errors, so a drawn seed fails them with probability below 1e-8 each.
"""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from iclgd import limits, streams
from iclgd.tasks import Examples, InterleavedBatch, NoisyRegressionTask
from iclgd.tokens.interleaved import encode

n_tasks_values = st.one_of(st.none(), st.integers(1, 20))
variances = st.floats(0.0, 4.0)


@settings(max_examples=40)
@given(st.integers(1, 6), st.integers(1, 10), st.integers(1, 5), n_tasks_values, st.sampled_from(["float32", "float64"]), seeds)
def test_samples_have_the_documented_shapes_and_dtypes(d, k, batch_size, n_tasks, dtype, seed):
    task = NoisyRegressionTask(d=d, n_examples=k, n_tasks=n_tasks, dtype=dtype)
    examples = task.sample_examples(batch_size, seed)
    assert isinstance(examples, Examples)
    assert (examples.xs.shape, examples.ys.shape, examples.weights.shape) == ((batch_size, k, d), (batch_size, k), (batch_size, d))
    assert {examples.xs.dtype, examples.ys.dtype, examples.weights.dtype} == {np.dtype("float64")}
    batch = task.sample(batch_size, seed)
    assert isinstance(batch, InterleavedBatch)
    assert (batch.tokens.shape, batch.targets.shape, batch.weights.shape) == ((batch_size, 2 * k, d + 1), (batch_size, k), (batch_size, d))
    assert {batch.tokens.dtype, batch.targets.dtype, batch.weights.dtype} == {np.dtype(dtype)}


@settings(max_examples=20)
@given(st.integers(1, 5), st.integers(1, 6), n_tasks_values, variances, seeds)
def test_sample_is_the_interleaved_encoding_of_sample_examples(d, k, n_tasks, variance, seed):
    task = NoisyRegressionTask(d=d, n_examples=k, n_tasks=n_tasks, noise_variance=variance)
    batch, expected = task.sample(3, seed), encode(task.sample_examples(3, seed))
    for field in ("tokens", "targets", "weights"):
        np.testing.assert_array_equal(getattr(batch, field), getattr(expected, field))


@settings(max_examples=10)
@given(st.integers(1, 5), st.floats(0.01, 4.0), n_tasks_values, seeds)
def test_labels_are_w_dot_x_plus_noise_of_mean_zero_and_variance_sigma2(d, variance, n_tasks, seed):
    task = NoisyRegressionTask(d=d, n_examples=8, noise_variance=variance, n_tasks=n_tasks)
    examples = task.sample_examples(2500, seed)  # 20,000 labels
    noise = (examples.ys - np.einsum("bkd,bd->bk", examples.xs, examples.weights)).ravel()
    n = noise.size
    assert abs(noise.mean()) <= 6 * np.sqrt(variance / n)
    assert abs(noise.var(ddof=1) - variance) <= 6 * variance * np.sqrt(2 / (n - 1))  # Var of s^2 = 2 sigma^4 / (n - 1)


@settings(max_examples=20)
@given(st.integers(1, 5), st.integers(1, 6), n_tasks_values, seeds)
def test_labels_are_exactly_w_dot_x_without_noise(d, k, n_tasks, seed):
    examples = NoisyRegressionTask(d=d, n_examples=k, noise_variance=0.0, n_tasks=n_tasks).sample_examples(4, seed)
    np.testing.assert_array_equal(examples.ys, np.einsum("bkd,bd->bk", examples.xs, examples.weights))


@settings(max_examples=10)
@given(st.integers(1, 4), st.floats(0.25, 4.0), seeds)
def test_inputs_are_centred_normal_with_variance_x_scale_squared(d, x_scale, seed):
    xs = NoisyRegressionTask(d=d, n_examples=8, x_scale=x_scale).sample_examples(2500, seed).xs.reshape(-1, d)
    n = xs.shape[0]
    assert np.all(np.abs(xs.mean(axis=0)) <= 6 * x_scale / np.sqrt(n))
    assert np.all(np.abs(xs.var(axis=0, ddof=1) - x_scale**2) <= 6 * x_scale**2 * np.sqrt(2 / (n - 1)))


@settings(max_examples=10)
@given(st.integers(1, 4), seeds)
def test_fresh_tasks_are_standard_normal_when_n_tasks_is_none(d, seed):
    weights = NoisyRegressionTask(d=d, n_tasks=None).sample_examples(20_000, seed).weights
    n = weights.shape[0]
    assert np.all(np.abs(weights.mean(axis=0)) <= 6 / np.sqrt(n))
    assert np.all(np.abs(weights.var(axis=0, ddof=1) - 1) <= 6 * np.sqrt(2 / (n - 1)))
    assert np.unique(weights, axis=0).shape[0] == n  # a fresh vector for every sequence


def test_the_pool_rows_are_standard_normal():
    pool = NoisyRegressionTask(d=4, n_tasks=20_000, pool_seed=11).pool()
    n = pool.shape[0]
    assert np.all(np.abs(pool.mean(axis=0)) <= 6 / np.sqrt(n))
    assert np.all(np.abs(pool.var(axis=0, ddof=1) - 1) <= 6 * np.sqrt(2 / (n - 1)))


@settings(max_examples=30)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(0, 1000), seeds)
def test_every_task_of_a_finite_pool_is_a_row_of_the_pool(d, n_tasks, pool_seed, seed):
    task = NoisyRegressionTask(d=d, n_tasks=n_tasks, pool_seed=pool_seed)
    pool, weights = task.pool(), task.sample_examples(50, seed).weights
    assert pool.shape == (n_tasks, d)
    matches = np.all(weights[:, None, :] == pool[None, :, :], axis=2)  # (B, M)
    assert matches.any(axis=1).all()


@settings(max_examples=10)
@given(st.integers(1, 12), seeds)
def test_each_pool_row_is_drawn_uniformly(n_tasks, seed):
    task = NoisyRegressionTask(d=3, n_tasks=n_tasks, pool_seed=seed % 1000)
    batch_size = 800 * n_tasks
    weights = task.sample_examples(batch_size, seed).weights
    index = np.argmax(np.all(weights[:, None, :] == task.pool()[None, :, :], axis=2), axis=1)
    counts = np.bincount(index, minlength=n_tasks)
    p = 1 / n_tasks
    assert np.all(np.abs(counts - batch_size * p) <= 6 * np.sqrt(batch_size * p * (1 - p)) + 1e-9)


@settings(max_examples=30)
@given(st.integers(1, 5), st.integers(1, 6), n_tasks_values, n_tasks_values, variances, variances,
       st.integers(0, 50), st.integers(0, 50), st.floats(0.25, 4.0), seeds)
def test_the_same_seed_gives_the_same_inputs_whatever_the_pool_noise_and_x_scale(
        d, k, m1, m2, var1, var2, pool1, pool2, x_scale, seed):
    first = NoisyRegressionTask(d=d, n_examples=k, n_tasks=m1, noise_variance=var1, pool_seed=pool1).sample_examples(5, seed)
    second = NoisyRegressionTask(d=d, n_examples=k, n_tasks=m2, noise_variance=var2, pool_seed=pool2,
                                 x_scale=x_scale).sample_examples(5, seed)
    np.testing.assert_array_equal(first.xs * x_scale, second.xs)


@settings(max_examples=30)
@given(st.integers(1, 5), n_tasks_values, variances, variances, seeds)
def test_the_same_seed_gives_the_same_tasks_whatever_the_noise(d, n_tasks, var1, var2, seed):
    first = NoisyRegressionTask(d=d, n_tasks=n_tasks, noise_variance=var1).sample_examples(5, seed)
    second = NoisyRegressionTask(d=d, n_tasks=n_tasks, noise_variance=var2).sample_examples(5, seed)
    np.testing.assert_array_equal(first.weights, second.weights)


@settings(max_examples=30)
@given(st.integers(1, 5), n_tasks_values, n_tasks_values, st.floats(0.01, 4.0), seeds)
def test_the_same_seed_gives_the_same_noise_whatever_the_pool(d, m1, m2, variance, seed):
    def noise(n_tasks):
        examples = NoisyRegressionTask(d=d, n_tasks=n_tasks, noise_variance=variance).sample_examples(5, seed)
        return examples.ys - np.einsum("bkd,bd->bk", examples.xs, examples.weights)
    np.testing.assert_allclose(noise(m1), noise(m2), rtol=0, atol=1e-9)  # y - w.x recovers eps up to rounding


@settings(max_examples=20)
@given(n_tasks_values, seeds, seeds)
def test_different_seeds_give_different_batches_and_a_generator_is_advanced(n_tasks, seed, other):
    task = NoisyRegressionTask(n_tasks=n_tasks)
    if seed != other:
        assert not np.array_equal(task.sample_examples(4, seed).xs, task.sample_examples(4, other).xs)
    rng = np.random.default_rng(seed)
    assert not np.array_equal(task.sample_examples(4, rng).xs, task.sample_examples(4, rng).xs)
    again = task.sample_examples(4, np.random.default_rng(seed))
    np.testing.assert_array_equal(again.ys, task.sample_examples(4, seed).ys)  # an int seed is default_rng(seed)


@settings(max_examples=30)
@given(st.integers(1, 5), st.integers(1, 30), st.integers(0, 2**32), st.integers(0, 2**32))
def test_different_pool_seeds_give_different_pools_and_the_same_seed_the_same_pool(d, n_tasks, pool_seed, other):
    pool = NoisyRegressionTask(d=d, n_tasks=n_tasks, pool_seed=pool_seed).pool()
    np.testing.assert_array_equal(pool, streams.pool_rng(pool_seed).standard_normal((n_tasks, d)))
    if other != pool_seed:
        assert not np.array_equal(pool, NoisyRegressionTask(d=d, n_tasks=n_tasks, pool_seed=other).pool())


@settings(max_examples=20)
@given(st.integers(1, 5), st.integers(1, 30), st.integers(0, 30), st.integers(0, 1000))
def test_a_pool_is_the_first_rows_of_every_larger_pool_of_the_same_seed(d, n_tasks, extra, pool_seed):
    small = NoisyRegressionTask(d=d, n_tasks=n_tasks, pool_seed=pool_seed).pool()
    large = NoisyRegressionTask(d=d, n_tasks=n_tasks + extra, pool_seed=pool_seed).pool()
    np.testing.assert_array_equal(small, large[:n_tasks])


def test_the_pool_is_independent_of_the_batch_stream_of_the_same_number():
    task = NoisyRegressionTask(n_tasks=5, pool_seed=3)
    assert not np.array_equal(task.pool(), np.random.default_rng(3).standard_normal((5, 4)))
    assert not np.array_equal(task.pool(), streams.init_rng(3).standard_normal((5, 4)))


def test_the_pool_is_cached_and_read_only():
    task = NoisyRegressionTask(n_tasks=7, pool_seed=1)
    assert task.pool() is NoisyRegressionTask(n_tasks=7, pool_seed=1, noise_variance=1.0).pool()
    with pytest.raises(ValueError, match="read-only"):
        task.pool()[0, 0] = 1.0


def test_there_is_no_pool_when_n_tasks_is_none():
    with pytest.raises(ValueError, match=r"^n_tasks is None"):
        NoisyRegressionTask(n_tasks=None).pool()


@settings(max_examples=20)
@given(st.integers(1, 5), st.integers(1, 9), n_tasks_values, variances, st.integers(0, 99), st.floats(0.25, 4.0))
def test_the_true_distribution_is_the_same_task_under_the_gaussian_prior(d, k, n_tasks, variance, pool_seed, x_scale):
    task = NoisyRegressionTask(d=d, n_examples=k, n_tasks=n_tasks, noise_variance=variance, pool_seed=pool_seed, x_scale=x_scale)
    assert task.true_distribution() == dataclasses.replace(task, n_tasks=None)
    assert task.true_distribution().n_tasks is None
    assert task.pretraining_distribution() is task


def test_the_defaults_are_the_papers_setting():
    task = NoisyRegressionTask()
    assert (task.d, task.n_examples, task.noise_variance, task.n_tasks, task.x_scale) == (4, 8, 0.125, None, 1.0)


@pytest.mark.parametrize("field, value", [
    ("d", 0), ("d", 2.5), ("d", True), ("n_examples", 0), ("n_examples", "8"),
    ("noise_variance", -0.1), ("noise_variance", float("nan")), ("noise_variance", float("inf")), ("noise_variance", "0.1"),
    ("n_tasks", 0), ("n_tasks", -3), ("n_tasks", 2.0), ("n_tasks", float("inf")), ("pool_seed", -1), ("pool_seed", 1.5),
    ("x_scale", 0.0), ("x_scale", -1.0), ("x_scale", float("inf")), ("dtype", "int32"), ("dtype", "float16"),
])
def test_bad_fields_are_refused_with_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} "):
        NoisyRegressionTask(**{field: value})


@pytest.mark.parametrize("fields, culprit", [
    ({"x_scale": 1e307}, "x_scale"), ({"x_scale": 1e36, "dtype": "float32"}, "x_scale"),
    ({"noise_variance": 1e80, "dtype": "float32"}, "noise_variance"), ({"x_scale": 1e35, "dtype": "float32"}, "x_scale"),
])
def test_scales_whose_draws_overflow_the_dtype_are_refused_naming_them(fields, culprit):
    with pytest.raises(ValueError, match=rf"^{culprit} (= \S+ )?is too large"):
        NoisyRegressionTask(**fields)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0])
def test_a_bad_batch_size_is_refused_naming_it(batch_size):
    with pytest.raises(ValueError, match=r"^batch_size "):
        NoisyRegressionTask().sample_examples(batch_size, 0)


def test_batches_and_pools_beyond_the_memory_limit_are_refused_before_allocation(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, str(2**20))  # 1 MiB
    with pytest.raises(ValueError, match=r"^batch_size = 100000 .* is too large"):
        NoisyRegressionTask().sample(100_000, 0)
    with pytest.raises(ValueError, match=r"^n_tasks = 1000000 .* is too large"):
        NoisyRegressionTask(n_tasks=1_000_000, pool_seed=12345).pool()
    NoisyRegressionTask(n_tasks=100).sample(100, 0)  # small work still runs
