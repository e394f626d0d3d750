"""The classic token format (iclgd.tokens.classic): x-token x_i at index 2i, y-token
(0, ..., 0, y_i) at 2i + 1, the query x_q last; the target is y_q."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import seeds

from iclgd.tasks import Examples, LinearRegressionTask
from iclgd.tokens.classic import ClassicBatch, decode, encode, x_token_indices, y_token_indices


@st.composite
def examples(draw, max_batch=4, max_k=8, min_d=1, max_d=5):
    """Examples of drawn shape (K >= 2 pairs: a context and a query) with N(0, 1) entries."""
    batch_size, k, d = draw(st.integers(1, max_batch)), draw(st.integers(2, max_k)), draw(st.integers(min_d, max_d))
    rng = np.random.default_rng(draw(seeds))
    return Examples(rng.standard_normal((batch_size, k, d)), rng.standard_normal((batch_size, k)), rng.standard_normal((batch_size, d)))


@given(examples())
def test_the_x_token_of_pair_i_is_x_i_at_index_2i(ex):
    tokens = encode(ex).tokens
    for i in range(ex.length - 1):
        np.testing.assert_array_equal(tokens[:, 2 * i], ex.xs[:, i])


@given(examples())
def test_the_y_token_of_pair_i_is_zeros_then_y_i_in_the_last_coordinate_at_index_2i_plus_1(ex):
    tokens = encode(ex).tokens
    for i in range(ex.length - 1):
        np.testing.assert_array_equal(tokens[:, 2 * i + 1, :-1], 0.0)
        np.testing.assert_array_equal(tokens[:, 2 * i + 1, -1], ex.ys[:, i])


@given(examples())
def test_the_query_input_is_the_last_token_as_it_is_and_its_label_is_the_target(ex):
    batch = encode(ex)
    assert batch.tokens.shape == (ex.batch_size, 2 * ex.length - 1, ex.d)
    np.testing.assert_array_equal(batch.tokens[:, -1], ex.xs[:, -1])
    np.testing.assert_array_equal(batch.targets, ex.ys[:, -1])


@given(examples())
def test_a_label_shares_the_last_coordinate_with_its_inputs_x_d_component(ex):
    tokens = encode(ex).tokens
    n = ex.length - 1
    np.testing.assert_array_equal(tokens[:, x_token_indices(n), -1], ex.xs[:, :n, -1])
    np.testing.assert_array_equal(tokens[:, y_token_indices(n), -1], ex.ys[:, :n])


@given(examples(), st.sampled_from(["float32", "float64"]))
def test_the_batch_holds_its_shape_and_the_task_vectors_in_the_dtype(ex, dtype):
    batch = encode(ex, dtype)
    assert isinstance(batch, ClassicBatch)
    assert (batch.batch_size, batch.n_context, batch.d) == (ex.batch_size, ex.length - 1, ex.d)
    np.testing.assert_array_equal(batch.weights, ex.weights.astype(dtype))
    assert {batch.tokens.dtype, batch.targets.dtype, batch.weights.dtype} == {np.dtype(dtype)}


@given(examples())
def test_a_bare_pair_encodes_as_the_examples_do_without_task_vectors(ex):
    from_pair, from_examples = encode((ex.xs, ex.ys)), encode(ex)
    np.testing.assert_array_equal(from_pair.tokens, from_examples.tokens)
    np.testing.assert_array_equal(from_pair.targets, from_examples.targets)
    assert from_pair.weights is None


@given(examples())
def test_decode_inverts_encode_up_to_the_query_label(ex):
    xs, ys = decode(encode(ex).tokens)
    np.testing.assert_array_equal(xs, ex.xs)
    np.testing.assert_array_equal(ys, ex.ys[:, :-1])
    assert xs.dtype == ys.dtype == np.float64


@given(st.integers(1, 5), st.integers(1, 8), seeds)
def test_encode_inverts_decode_with_the_targets_as_query_labels(d, n, seed):
    batch = encode(LinearRegressionTask(d=d, n_context=n).sample_examples(3, seed))
    xs, ys = decode(batch.tokens)
    again = encode((xs, np.concatenate([ys, batch.targets[:, None]], axis=1)))
    np.testing.assert_array_equal(again.tokens, batch.tokens)
    np.testing.assert_array_equal(again.targets, batch.targets)


@given(examples(min_d=2), st.data())
def test_decode_refuses_a_y_token_with_an_input_before_its_last_coordinate_naming_it(ex, data):
    tokens = encode(ex).tokens
    i = data.draw(st.integers(0, ex.length - 2))
    b = data.draw(st.integers(0, ex.batch_size - 1))
    tokens[b, 2 * i + 1, data.draw(st.integers(0, ex.d - 2))] = 1.5
    with pytest.raises(ValueError, match=rf"^tokens are not in the classic format: the y-token of pair {i + 1} "
                                         rf"\(token {2 * i + 1}\) of sequence {b} must be"):
        decode(tokens)


@pytest.mark.parametrize("tokens, message", [
    (np.zeros((2, 4, 3)), r"^tokens must have shape \(B, 2N \+ 1, d\) .* got \(2, 4, 3\)"),
    (np.zeros((2, 1, 3)), r"^tokens must have shape \(B, 2N \+ 1, d\) .* got \(2, 1, 3\)"),
    (np.zeros((2, 5, 0)), r"^tokens must have shape \(B, 2N \+ 1, d\) .* got \(2, 5, 0\)"),
    (np.zeros((0, 5, 3)), r"^tokens must have shape \(B, 2N \+ 1, d\) .* got \(0, 5, 3\)"),
    (np.zeros((5, 3)), r"^tokens must be a 3-d array"),
    (np.full((1, 3, 2), np.inf), r"^tokens must hold only finite values"),
    (np.array([[["a"]]]), r"^tokens must be a real-valued array"),
])
def test_decode_refuses_arrays_of_the_wrong_shape_or_values(tokens, message):
    with pytest.raises(ValueError, match=message):
        decode(tokens)


@pytest.mark.parametrize("examples, message", [
    (np.zeros((2, 3, 4)), r"^examples must be an iclgd.tasks.Examples or a pair \(xs, ys\); got ndarray"),
    ((np.zeros((2, 3, 4)),), r"^examples must be an iclgd.tasks.Examples or a pair"),
    ((np.zeros((2, 3)), np.zeros((2, 3))), r"^xs must be a 3-d array"),
    ((np.zeros((2, 1, 4)), np.zeros((2, 1))), r"^xs must have shape \(B, K, d\) with B >= 1, K >= 2 .* got \(2, 1, 4\)"),
    ((np.zeros((2, 3, 4)), np.zeros((2, 4))), r"^ys must have shape \(B, K\) = \(2, 3\) to match xs \(2, 3, 4\); got \(2, 4\)"),
    ((np.zeros((2, 3, 4)), np.full((2, 3), np.nan)), r"^ys must hold only finite values"),
])
def test_encode_refuses_what_is_not_pairs_of_matching_shapes(examples, message):
    with pytest.raises(ValueError, match=message):
        encode(examples)


def test_encode_refuses_a_dtype_that_is_not_a_float():
    with pytest.raises(ValueError, match=r"^dtype must be one of"):
        encode(LinearRegressionTask(d=2, n_context=3).sample_examples(2, 0), "int64")
