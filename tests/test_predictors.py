"""Every predictor answers per prefix, (B, K), the query prediction being the last column."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iclgd
from iclgd import baselines, predictors
from iclgd.tokens.constructed import prefix_tokens


def examples(d, n_context, batch, seed):
    return iclgd.LinearRegressionTask(d=d, n_context=n_context).sample_examples(batch, seed)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_the_last_column_is_the_query_prediction_on_the_whole_context(d, n_context, seed):
    ex = examples(d, n_context, 6, seed)
    tokens = iclgd.LinearRegressionTask(d=d, n_context=n_context).sample(6, seed).tokens
    cfg = iclgd.LSAConfig(d=d, n_context=n_context)
    params = iclgd.init_params(cfg, seed % 1000, scale=1.0)
    backend = iclgd.get_backend("numpy")
    np.testing.assert_array_equal(predictors.lsa_per_prefix(backend, cfg, params, ex)[:, -1], backend.predict(cfg, params, tokens))
    np.testing.assert_allclose(predictors.gd_per_prefix(ex, 0.7)[:, -1], baselines.gd_predict(tokens, 0.7), rtol=0, atol=0)


def test_column_k_sees_only_the_pairs_before_it():
    ex = examples(3, 6, 5, 0)
    changed = iclgd.tasks.Examples(ex.xs.copy(), ex.ys.copy(), ex.weights)
    changed.ys[:, 3:] += 100.0  # labels from pair 4 on: columns 1..4 must not move
    before, after = predictors.least_squares_per_prefix(ex), predictors.least_squares_per_prefix(changed)
    np.testing.assert_array_equal(before[:, :4], after[:, :4])
    assert np.all(before[:, 4:] != after[:, 4:])


def test_with_no_context_every_predictor_answers_zero_as_the_oracle_computes_it():
    from iclgd.backends.numpy_backend import QUERY_ROW, _forward, _read_out

    ex = examples(4, 5, 7, 1)
    cfg = iclgd.LSAConfig(d=4)
    params = iclgd.init_params(cfg, 0, scale=1.0)
    # the oracle's own forward pass on a query token with no context (the API refuses N = 0)
    empty = prefix_tokens(ex, 1)
    np.testing.assert_array_equal(_read_out(_forward(cfg, params, empty, QUERY_ROW)[0][-1]), np.zeros(7))
    for table in (predictors.lsa_per_prefix(iclgd.get_backend("numpy"), cfg, params, ex),
                  predictors.gd_per_prefix(ex, 1.0), predictors.least_squares_per_prefix(ex), predictors.ridge_per_prefix(ex, 0.1)):
        assert table.shape == (7, 6) and np.all(table[:, 0] == 0.0)  # K = n_context + 1 pairs


def test_least_squares_is_exact_once_the_context_has_d_independent_noise_free_pairs():
    d = 3
    ex = examples(d, 8, 10, 2)
    table = predictors.least_squares_per_prefix(ex)
    truth = np.einsum("bkd,bd->bk", ex.xs, ex.weights)  # noise-free labels, computed from w directly
    np.testing.assert_allclose(table[:, d:], truth[:, d:], atol=1e-9)
    assert np.all(np.abs(table[:, 1:d] - truth[:, 1:d]).max(axis=0) > 1e-6)  # fewer pairs than d: not yet


def test_prefix_tokens_hide_the_query_label_and_keep_earlier_pairs():
    ex = examples(2, 4, 3, 3)
    tokens = prefix_tokens(ex, 3)
    assert tokens.shape == (3, 3, 3)
    np.testing.assert_array_equal(tokens[:, :2, :2], ex.xs[:, :2])
    np.testing.assert_array_equal(tokens[:, :2, 2], ex.ys[:, :2])
    np.testing.assert_array_equal(tokens[:, 2, :2], ex.xs[:, 2])
    assert np.all(tokens[:, 2, 2] == 0.0)


def test_an_lsa_that_attends_to_its_query_is_refused_per_prefix():
    cfg = iclgd.LSAConfig(d=2, include_query=True)
    with pytest.raises(ValueError, match="include_query"):
        predictors.lsa_per_prefix(iclgd.get_backend("numpy"), cfg, iclgd.init_params(cfg, 0), examples(2, 3, 2, 0))


@pytest.mark.parametrize("k", [0, 5])
def test_a_prefix_outside_the_sequence_is_refused(k):
    with pytest.raises(ValueError, match="k must be in 1..4"):
        prefix_tokens(examples(2, 3, 2, 0), k)
