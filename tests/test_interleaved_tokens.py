"""The interleaved token format (iclgd.tokens.interleaved): x-token (0, x_k) at index 2k - 2,
y-token (y_k, 0, ..., 0) at index 2k - 1, predictions read at the x-tokens."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from iclgd.tasks import Examples, NoisyRegressionTask
from iclgd.tokens import InterleavedBatch, decode_interleaved, encode_interleaved, predictions_from_outputs
from iclgd.tokens.interleaved import decode, encode


@st.composite
def examples(draw, max_batch=4, max_k=8, max_d=5):
    """Examples of drawn shape with N(0, 1) entries (no task structure needed for a format)."""
    batch_size, k, d = draw(st.integers(1, max_batch)), draw(st.integers(1, max_k)), draw(st.integers(1, max_d))
    rng = np.random.default_rng(draw(seeds))
    return Examples(rng.standard_normal((batch_size, k, d)), rng.standard_normal((batch_size, k)), rng.standard_normal((batch_size, d)))


@given(examples())
def test_the_x_token_of_pair_k_is_zero_then_x_k_at_index_2k_minus_2(ex):
    tokens = encode(ex).tokens
    for k in range(1, ex.length + 1):
        np.testing.assert_array_equal(tokens[:, 2 * k - 2, 0], 0.0)
        np.testing.assert_array_equal(tokens[:, 2 * k - 2, 1:], ex.xs[:, k - 1])


@given(examples())
def test_the_y_token_of_pair_k_is_y_k_then_zeros_at_index_2k_minus_1(ex):
    tokens = encode(ex).tokens
    for k in range(1, ex.length + 1):
        np.testing.assert_array_equal(tokens[:, 2 * k - 1, 0], ex.ys[:, k - 1])
        np.testing.assert_array_equal(tokens[:, 2 * k - 1, 1:], 0.0)


@given(examples(), st.sampled_from(["float32", "float64"]))
def test_the_batch_holds_the_labels_as_targets_and_the_task_vectors_in_the_dtype(ex, dtype):
    batch = encode(ex, dtype)
    assert isinstance(batch, InterleavedBatch)
    assert (batch.batch_size, batch.n_examples, batch.d) == (ex.batch_size, ex.length, ex.d)
    assert batch.tokens.shape == (ex.batch_size, 2 * ex.length, ex.d + 1)
    np.testing.assert_array_equal(batch.targets, ex.ys.astype(dtype))
    np.testing.assert_array_equal(batch.weights, ex.weights.astype(dtype))
    assert {batch.tokens.dtype, batch.targets.dtype, batch.weights.dtype} == {np.dtype(dtype)}


@given(examples())
def test_decode_inverts_encode(ex):
    xs, ys = decode(encode(ex).tokens)
    np.testing.assert_array_equal(xs, ex.xs)
    np.testing.assert_array_equal(ys, ex.ys)
    assert xs.dtype == ys.dtype == np.float64


@settings(max_examples=20)
@given(st.integers(1, 5), st.integers(1, 8), seeds)
def test_encode_inverts_decode_on_a_tasks_tokens(d, k, seed):
    tokens = NoisyRegressionTask(d=d, n_examples=k).sample(3, seed).tokens
    xs, ys = decode_interleaved(tokens)
    np.testing.assert_array_equal(encode_interleaved(Examples(xs, ys, np.zeros((3, d)))).tokens, tokens)


@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 5), seeds)
def test_predictions_are_the_first_output_coordinate_at_each_x_token(batch_size, k, d, seed):
    outputs = np.random.default_rng(seed).standard_normal((batch_size, 2 * k, d + 1))
    predictions = predictions_from_outputs(outputs)
    assert predictions.shape == (batch_size, k)
    for b in range(batch_size):
        for j in range(1, k + 1):
            assert predictions[b, j - 1] == outputs[b, 2 * j - 2, 0]


@given(examples(), st.data())
def test_a_causal_model_read_at_the_x_tokens_never_sees_the_label_it_predicts(ex, data):
    """A causal "model" (output at token t = the running sum of tokens 0..t) read at x_k answers
    from pairs 1..k-1 and x_k: changing y_k and later labels leaves predictions 1..k unchanged."""
    def causal_model(tokens):
        return np.cumsum(tokens, axis=1)

    k = data.draw(st.integers(1, ex.length))
    changed = ex.ys.copy()
    changed[:, k - 1:] += 1.0 + np.abs(changed[:, k - 1:])
    before = predictions_from_outputs(causal_model(encode(ex).tokens))
    after = predictions_from_outputs(causal_model(encode(Examples(ex.xs, changed, ex.weights)).tokens))
    np.testing.assert_array_equal(before[:, :k], after[:, :k])
    np.testing.assert_array_equal(before[:, 1:], np.cumsum(ex.ys, axis=1)[:, :-1])  # y_1 + .. + y_{k-1}


@given(examples(), st.data())
def test_decode_refuses_tokens_that_break_the_layout_naming_the_token(ex, data):
    tokens = encode(ex).tokens
    k = data.draw(st.integers(1, ex.length))
    b = data.draw(st.integers(0, ex.batch_size - 1))
    if data.draw(st.booleans()):  # a label in the x-token
        token, column = 2 * k - 2, 0
    else:  # an input in the y-token
        token, column = 2 * k - 1, data.draw(st.integers(1, ex.d))
    tokens[b, token, column] = 1.5
    with pytest.raises(ValueError, match=rf"interleaved format: the [xy]-token of pair {k} \(token {token}\) of sequence {b} must"):
        decode(tokens)


@pytest.mark.parametrize("tokens, message", [
    (np.zeros((2, 3, 4)), r"^tokens must have shape \(B, 2K, d \+ 1\) .* got \(2, 3, 4\)"),
    (np.zeros((2, 4, 1)), r"^tokens must have shape \(B, 2K, d \+ 1\) .* got \(2, 4, 1\)"),
    (np.zeros((0, 4, 3)), r"^tokens must have shape \(B, 2K, d \+ 1\) .* got \(0, 4, 3\)"),
    (np.zeros((4, 3)), r"^tokens must be a 3-d array"),
    (np.full((1, 2, 2), np.nan), r"^tokens must hold only finite values"),
    (np.array([["a"]]), r"^tokens must be a real-valued array"),
])
def test_decode_refuses_arrays_of_the_wrong_shape_or_values(tokens, message):
    with pytest.raises(ValueError, match=message):
        decode(tokens)


@pytest.mark.parametrize("outputs", [np.zeros((2, 3, 4)), np.zeros((4, 5)), np.zeros((1, 0, 3)), np.array([[["a", "b"]] * 2])])
def test_predictions_from_outputs_refuses_anything_but_b_by_2k_by_d_plus_1(outputs):
    with pytest.raises(ValueError, match=r"^outputs must"):
        predictions_from_outputs(outputs)


def test_encode_refuses_what_is_not_examples_and_bad_dtypes():
    ex = NoisyRegressionTask().sample_examples(2, 0)
    with pytest.raises(ValueError, match=r"^examples must be an iclgd.tasks.Examples; got ndarray"):
        encode(ex.xs)
    with pytest.raises(ValueError, match=r"^dtype must be one of"):
        encode(ex, "int64")
