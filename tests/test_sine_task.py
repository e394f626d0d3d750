"""SineRegressionTask (iclgd.tasks.sine): von Oswald et al.'s sine-regression task.

Tokens (x_i, y_i) then (x_q, 0), y = A sin(x + phi), x ~ U(-a, a); A and phi from one uniform
("authors": perfectly correlated, as the authors' code draws them) or from two ("independent").
Statistical claims use 6 standard errors, so a drawn seed fails them with probability below 1e-8.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from iclgd.tasks.sine import DRAWS, SineBatch, SineRegressionTask, sine

draws = st.sampled_from(DRAWS)
dtypes = st.sampled_from(["float32", "float64"])
ranges = st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 2.0)).map(sorted).map(tuple)


@settings(max_examples=30)
@given(st.integers(1, 12), st.integers(1, 6), draws, dtypes, seeds)
def test_samples_have_the_documented_shapes_and_dtypes(n_context, batch_size, draw, dtype, seed):
    batch = SineRegressionTask(n_context=n_context, draws=draw, dtype=dtype).sample(batch_size, seed)
    assert isinstance(batch, SineBatch)
    assert batch.tokens.shape == (batch_size, n_context + 1, 2)
    assert batch.targets.shape == batch.amplitudes.shape == batch.phases.shape == (batch_size,)
    assert {a.dtype for a in (batch.tokens, batch.targets, batch.amplitudes, batch.phases)} == {np.dtype(dtype)}
    assert (batch.batch_size, batch.n_context) == (batch_size, n_context)


@settings(max_examples=30)
@given(st.integers(1, 12), st.integers(1, 6), draws, ranges, ranges, seeds)
def test_labels_are_exactly_amplitude_times_sine_of_x_plus_phase(n_context, batch_size, draw, amplitudes, phases, seed):
    task = SineRegressionTask(n_context=n_context, amplitude_range=amplitudes, phase_range=phases, draws=draw)
    batch = task.sample(batch_size, seed)
    x = batch.tokens[:, :, 0]
    a, phi = batch.amplitudes[:, None], batch.phases[:, None]
    np.testing.assert_array_equal(batch.tokens[:, :-1, 1], a * np.sin(x[:, :-1] + phi))
    np.testing.assert_array_equal(batch.targets, batch.amplitudes * np.sin(x[:, -1] + batch.phases))


@settings(max_examples=10)
@given(st.integers(1, 12), seeds)
def test_the_query_token_carries_x_q_and_a_zero_label(n_context, seed):
    batch = SineRegressionTask(n_context=n_context).sample(5, seed)
    assert np.all(batch.tokens[:, -1, 1] == 0.0)
    np.testing.assert_array_equal(sine(batch.tokens[:, -1:, 0], batch.amplitudes, batch.phases)[:, 0], batch.targets)


@settings(max_examples=30)
@given(st.floats(0.1, 10.0), ranges, ranges, draws, seeds)
def test_inputs_amplitudes_and_phases_lie_in_their_ranges(x_range, amplitudes, phases, draw, seed):
    task = SineRegressionTask(x_range=x_range, amplitude_range=amplitudes, phase_range=phases, draws=draw)
    batch = task.sample(50, seed)
    x = batch.tokens[:, :, 0]
    assert np.all((-x_range <= x) & (x <= x_range))
    assert np.all((amplitudes[0] <= batch.amplitudes) & (batch.amplitudes <= amplitudes[1]))
    assert np.all((phases[0] <= batch.phases) & (batch.phases <= phases[1]))


@settings(max_examples=10)
@given(seeds)
def test_the_authors_draws_give_amplitude_0_1_plus_0_4_phase_over_pi(seed):
    batch = SineRegressionTask(draws="authors").sample(200, seed)
    np.testing.assert_allclose(batch.amplitudes, 0.1 + 0.4 * batch.phases / math.pi, rtol=0, atol=1e-15)


@settings(max_examples=5)
@given(seeds)
def test_independent_draws_are_uncorrelated_and_uniform(seed):
    n = 20_000
    batch = SineRegressionTask(draws="independent").sample(n, seed)
    u = (batch.amplitudes - 0.1) / 0.4
    v = batch.phases / math.pi
    # a sample correlation of independent variables has standard error 1 / sqrt(n)
    assert abs(np.corrcoef(u, v)[0, 1]) <= 6 / math.sqrt(n)
    for w in (u, v):  # U(0, 1): mean 1/2, variance 1/12 (the mean's standard error sqrt(1/12 / n))
        assert abs(w.mean() - 0.5) <= 6 * math.sqrt(1 / 12 / n)


@settings(max_examples=5)
@given(seeds)
def test_inputs_are_uniform_on_minus_a_to_a(seed):
    x = SineRegressionTask(x_range=5.0).sample(2000, seed).tokens[:, :, 0].ravel()  # 22,000 draws
    n = x.size
    assert abs(x.mean()) <= 6 * math.sqrt(25 / 3 / n)  # Var U(-5, 5) = 25 / 3
    assert abs(np.mean(x ** 2) - 25 / 3) <= 6 * math.sqrt((625 / 5 - (25 / 3) ** 2) / n)  # Var x^2 = E x^4 - (E x^2)^2


@settings(max_examples=15)
@given(draws, seeds)
def test_a_seed_reproduces_its_tasks_and_a_generator_is_used_as_is(draw, seed):
    task = SineRegressionTask(draws=draw)
    first, again = task.sample(7, seed), task.sample(7, np.random.default_rng(seed))
    for field in ("tokens", "targets", "amplitudes", "phases"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(task.sample(7, seed + 1).tokens, first.tokens)


@given(seeds)
@settings(max_examples=10)
def test_float32_tasks_are_the_float64_tasks_rounded(seed):
    wide, narrow = SineRegressionTask(dtype="float64").sample(4, seed), SineRegressionTask(dtype="float32").sample(4, seed)
    np.testing.assert_array_equal(narrow.tokens, wide.tokens.astype(np.float32))


def test_the_defaults_are_the_authors_task():
    task = SineRegressionTask()
    assert (task.n_context, task.x_range, task.amplitude_range, task.phase_range, task.draws) == (10, 5.0, (0.1, 0.5), (0.0, math.pi), "authors")


@pytest.mark.parametrize("changes, words", [
    (dict(n_context=0), "n_context"),
    (dict(n_context=2.5), "n_context"),
    (dict(x_range=0.0), "x_range"),
    (dict(x_range=float("inf")), "x_range"),
    (dict(amplitude_range=(0.5, 0.1)), "low <= high"),
    (dict(amplitude_range=(-0.1, 0.5)), "non-negative"),
    (dict(amplitude_range=0.3), "pair"),
    (dict(phase_range=(0.0, 1.0, 2.0)), "pair"),
    (dict(phase_range=(0.0, float("nan"))), "phase_range"),
    (dict(draws="correlated"), "draws"),
    (dict(dtype="int32"), "dtype"),
    (dict(x_range=1e39, dtype="float32"), "float32"),
])
def test_bad_settings_are_value_errors_naming_the_field(changes, words):
    with pytest.raises(ValueError, match=words):
        SineRegressionTask(**changes)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_a_bad_batch_size_is_a_value_error(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        SineRegressionTask().sample(batch_size, 0)


def test_a_negative_seed_is_a_value_error():
    with pytest.raises(ValueError, match="seed"):
        SineRegressionTask().sample(3, -1)
