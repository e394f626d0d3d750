"""The NumPy oracle of the attention stack (iclgd.backends.numpy_stack) and its model module
(iclgd.models.stack).

Read as a specification: the hand-written gradients (of the loss in every parameter, of any
stream in the raw tokens, of the prediction in the tokens) are central finite differences; the
forward equals an independent loop-by-loop transcription of the model's docstring; softmax rows
are distributions over the keys, and the query is a key only when ``query_attended``; linear
scores are Q K^T; a stack of linear layers without extras is von Oswald's LSA (checked against
``iclgd``'s LSA engine); the positional encoding, GELU and the init follow their formulas; float32
configs compute in float32; bad inputs are refused naming the problem.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import iclgd
from iclgd.backends import numpy_stack as oracle
from iclgd.models import stack
from iclgd.models.stack import (
    TRUNCATED_STD,
    StackConfig,
    fan_in,
    gelu,
    gelu_grad,
    init_params,
    param_shapes,
    sinusoidal_encoding,
    zero_params,
)

#: Finite differences: central, step STEP * max(1, |theta|), the loss evaluated in extended
#: precision (np.longdouble) by the oracle's own forward; tensors with more than ENTRIES entries
#: are checked at ENTRIES of them (their largest analytic entry and a seeded random rest).
STEP = 1e-5
ENTRIES = 6
RTOL = 1e-6
#: Draws whose stream exceeds this are redrawn: three linear layers form a polynomial of degree
#: 27 in the tokens, where no finite difference resolves a gradient to 1e-6.
MAX_STREAM = 1e4

seeds = st.integers(0, 2**32 - 1)


# --- drawing models ------------------------------------------------------------------------------------


@st.composite
def stack_configs(draw, dtype="float64"):
    """Small configs: 1-3 layers of drawn kinds, 1-2 heads, P in {0, 2, 4} or the MLP embedding,
    LayerNorm, MLP and query_attended on or off."""
    embedding = draw(st.sampled_from(("none", "mlp")))
    return StackConfig(
        token_size=draw(st.integers(1, 3)),
        attention=tuple(draw(st.lists(st.sampled_from(stack.ATTENTION_KINDS), min_size=1, max_size=3))),
        n_heads=draw(st.integers(1, 2)),
        positional_size=0 if embedding == "mlp" else draw(st.sampled_from((0, 2, 4))),
        embedding=embedding,
        d_embed=draw(st.integers(2, 4)),
        d_embed_hidden=draw(st.integers(2, 5)),
        layer_norm=draw(st.booleans()),
        mlp=draw(st.booleans()),
        query_attended=draw(st.booleans()),
        dtype=dtype,
    )


@st.composite
def stack_cases(draw, dtype="float64"):
    """(cfg, params, tokens (B, T, D), targets (B,), rng): T 3-6, B 1-3."""
    cfg = draw(stack_configs(dtype))
    rng = np.random.default_rng(draw(seeds))
    n_tokens, batch = draw(st.integers(3, 6)), draw(st.integers(1, 3))
    params = random_params(cfg, rng)
    tokens = rng.standard_normal((batch, n_tokens, cfg.token_size))
    targets = rng.standard_normal(batch)
    return cfg, params, tokens, targets, rng


def random_params(cfg: StackConfig, rng: np.random.Generator, scale: float = 0.5) -> dict[str, np.ndarray]:
    """The init, with biases and LayerNorm parameters moved off 0 and 1 (so that their gradients
    are checked at a generic point), in float64."""
    params = {name: value.astype(np.float64) for name, value in init_params(cfg, rng, scale).items()}
    for name, value in params.items():
        if fan_in(cfg, name) is None:
            value += 0.3 * rng.standard_normal(value.shape)
    return params


def in_longdouble(params: dict, tokens: np.ndarray):
    return {name: np.asarray(v, dtype=np.longdouble) for name, v in params.items()}, np.asarray(tokens, dtype=np.longdouble)


def exact_loss(cfg, params, tokens, targets) -> float:
    """The half-MSE by the oracle's forward in extended precision (no input checks, no cast)."""
    params, tokens = in_longdouble(params, tokens)
    yhat = oracle.read_out(oracle.forward_with_cache(cfg, params, tokens)[0][-1])
    residual = yhat - np.asarray(targets, dtype=np.longdouble)
    return 0.5 * np.mean(residual * residual)


def exact_stream(cfg, params, tokens, layer) -> np.ndarray:
    params, tokens = in_longdouble(params, tokens)
    return oracle.forward_with_cache(cfg, params, tokens)[0][layer]


def checked_entries(analytic: np.ndarray, rng: np.random.Generator) -> list[tuple]:
    if analytic.size <= ENTRIES:
        return list(np.ndindex(analytic.shape))
    largest = int(np.argmax(np.abs(analytic)))
    others = rng.choice(np.delete(np.arange(analytic.size), largest), ENTRIES - 1, replace=False)
    return [np.unravel_index(int(i), analytic.shape) for i in sorted([largest, *others])]


def central_difference(f, array: np.ndarray, index: tuple) -> float:
    """(f(array + h e_i) - f(array - h e_i)) / 2h, array modified in place and restored."""
    original = array[index]
    step = STEP * max(1.0, abs(float(original)))
    array[index] = original + step
    up = f()
    array[index] = original - step
    down = f()
    array[index] = original
    return float((up - down) / (2 * step))


def assert_close_to_differences(analytic: np.ndarray, differences: dict, what: str, floor: float = 1e-8) -> None:
    """Every finite difference equals its analytic entry to RTOL of the tensor's scale (at least
    ``floor``: a tensor whose gradient nearly vanishes is checked against the others' scale,
    below which the differences' own truncation error, h^2 L''' / 6, is not negligible)."""
    scale = max(np.max(np.abs(analytic)), max(abs(v) for v in differences.values()), floor)
    for index, difference in differences.items():
        assert abs(analytic[index] - difference) <= RTOL * scale, (
            f"{what}{list(index)}: analytic {analytic[index]!r}, finite difference {difference!r} (scale {scale:.3g})"
        )


def bounded(cfg, params, tokens) -> bool:
    return all(np.max(np.abs(h)) < MAX_STREAM for h in oracle.forward_with_cache(cfg, params, tokens)[0])


# --- gradients ------------------------------------------------------------------------------------------


def check_parameter_gradients(cfg, params, tokens, targets, rng) -> None:
    """loss_and_grad's loss is the loss, and its gradient the central differences at the checked entries."""
    loss, grads = oracle.loss_and_grad(cfg, params, tokens, targets)
    assert list(grads) == list(param_shapes(cfg))
    assert loss == pytest.approx(float(exact_loss(cfg, params, tokens, targets)), rel=1e-12)
    work = {name: np.array(v, dtype=np.longdouble) for name, v in params.items()}
    floor = 1e-4 * max(np.max(np.abs(g)) for g in grads.values())
    for name, analytic in grads.items():
        assert analytic.shape == params[name].shape
        f = lambda: exact_loss(cfg, work, tokens, targets)  # noqa: E731
        differences = {i: central_difference(f, work[name], i) for i in checked_entries(analytic, rng)}
        assert_close_to_differences(analytic, differences, name, floor)


@settings(max_examples=60)
@given(stack_cases())
def test_every_parameter_gradient_is_the_central_finite_difference(case):
    cfg, params, tokens, targets, rng = case
    assume(bounded(cfg, params, tokens))
    check_parameter_gradients(cfg, params, tokens, targets, rng)


@pytest.mark.parametrize("cfg", [
    StackConfig(token_size=3, attention=("softmax", "linear"), n_heads=2, positional_size=4),  # interleaved tokens
    StackConfig(token_size=2, attention=("linear",), embedding="mlp", d_embed=5, d_embed_hidden=7),  # sine regression
    StackConfig(token_size=3, attention=("softmax", "linear", "softmax"), n_heads=2, positional_size=2,
                layer_norm=True, mlp=True, query_attended=True),  # everything on
], ids=["interleaved", "sine", "everything"])
def test_the_experiments_models_gradients_are_the_central_finite_differences(cfg):
    rng = np.random.default_rng(7)
    params = random_params(cfg, rng)
    tokens, targets = rng.standard_normal((3, 6, cfg.token_size)), rng.standard_normal(3)
    check_parameter_gradients(cfg, params, tokens, targets, rng)


@settings(max_examples=25)
@given(stack_cases(), st.data())
def test_stream_vjp_is_the_central_finite_difference_in_the_raw_tokens(case, data):
    cfg, params, tokens, _, rng = case
    assume(bounded(cfg, params, tokens))
    layer = data.draw(st.integers(0, cfg.n_layers), label="layer")
    upstream = rng.standard_normal((*tokens.shape[:2], cfg.width))
    analytic = oracle.stream_vjp(cfg, params, tokens, layer, upstream)
    assert analytic.shape == tokens.shape
    work = np.array(tokens, dtype=np.longdouble)
    f = lambda: np.sum(upstream * exact_stream(cfg, params, work, layer))  # noqa: E731
    differences = {i: central_difference(f, work, i) for i in np.ndindex(tokens.shape)}
    assert_close_to_differences(analytic, differences, f"d<U, h_{layer}>/dX")


@settings(max_examples=25)
@given(stack_cases())
def test_prediction_input_grad_is_the_jacobian_of_each_prediction_in_its_own_tokens(case):
    cfg, params, tokens, _, _ = case
    assume(bounded(cfg, params, tokens))
    analytic = oracle.prediction_input_grad(cfg, params, tokens)
    assert analytic.shape == tokens.shape
    work = np.array(tokens, dtype=np.longdouble)
    batch = tokens.shape[0]
    for b in range(batch):
        for other in range(batch):
            f = lambda: -exact_stream(cfg, params, work, cfg.n_layers)[b, -1, -1]  # noqa: E731
            differences = {(other, *i): central_difference(f, work, (other, *i)) for i in np.ndindex(tokens.shape[1:])}
            expected = analytic if other == b else np.zeros_like(analytic)
            assert_close_to_differences(expected, differences, f"d yhat_{b} / dX")


def test_stream_vjp_at_layer_zero_without_embedding_is_the_upstream_on_the_token_columns():
    cfg = StackConfig(token_size=3, attention=("softmax",), positional_size=4)
    rng = np.random.default_rng(0)
    tokens, upstream = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 7))
    np.testing.assert_array_equal(oracle.stream_vjp(cfg, init_params(cfg, 0), tokens, 0, upstream), upstream[..., :3])


# --- the forward against the docstring -----------------------------------------------------------------


def transcribed_stream(cfg: StackConfig, params: dict, tokens: np.ndarray) -> list[np.ndarray]:
    """The model section of iclgd.models.stack's docstring, one sequence, head and layer at a time."""
    def layer_norm(x, prefix):
        if not cfg.layer_norm:
            return x
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * params[prefix + ".weight"] + params[prefix + ".bias"]

    def tanh_gelu(u):
        return 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))

    batch, n_tokens, _ = tokens.shape
    width = cfg.width
    n_keys = n_tokens if cfg.query_attended else n_tokens - 1
    out = []
    for b in range(batch):
        x = tokens[b]
        if cfg.embedding == "mlp":
            e = x @ params["embed.w"]
            h = e + tanh_gelu(e @ params["embed.mlp.w_in"] + params["embed.mlp.b_in"]) @ params["embed.mlp.w_out"] + params["embed.mlp.b_out"]
        else:
            pe = np.array([[math.sin(t / 10000 ** (2 * (c // 2) / cfg.positional_size)) if c % 2 == 0
                            else math.cos(t / 10000 ** (2 * (c // 2) / cfg.positional_size))
                            for c in range(cfg.positional_size)] for t in range(n_tokens)]).reshape(n_tokens, -1)
            h = np.concatenate([x, pe], axis=1)
        streams = [h]
        for l, kind in enumerate(cfg.attention):
            p = f"layer{l}."
            a = layer_norm(h, p + "ln")
            update = np.zeros((n_tokens, width))
            for j in range(cfg.n_heads):
                q = a @ params[p + "w_q"][j]
                k = a[:n_keys] @ params[p + "w_k"][j]
                v = a[:n_keys] @ params[p + "w_v"][j]
                scores = q @ k.T
                if kind == "softmax":
                    weights = np.exp(scores / math.sqrt(width))
                    scores = weights / weights.sum(axis=1, keepdims=True)
                update += scores @ v @ params[p + "w_o"][j]
            h = h + update
            if cfg.mlp:
                a = layer_norm(h, p + "mlp_ln")
                h = h + tanh_gelu(a @ params[p + "mlp.w_in"] + params[p + "mlp.b_in"]) @ params[p + "mlp.w_out"] + params[p + "mlp.b_out"]
            streams.append(h)
        out.append(streams)
    return [np.stack([out[b][l] for b in range(batch)]) for l in range(cfg.n_layers + 1)]


@settings(max_examples=30)
@given(stack_cases())
def test_forward_equals_a_loop_by_loop_transcription_of_the_docstring(case):
    cfg, params, tokens, targets, _ = case
    states = oracle.forward(cfg, params, tokens)
    expected = transcribed_stream(cfg, params, tokens)
    assert len(states) == cfg.n_layers + 1
    for layer, (got, want) in enumerate(zip(states, expected)):
        assert got.shape == (*tokens.shape[:2], cfg.width)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, np.max(np.abs(want))), err_msg=f"h_{layer}")
    yhat = -expected[-1][:, -1, -1]
    np.testing.assert_allclose(oracle.predict(cfg, params, tokens), yhat, rtol=1e-9, atol=1e-9 * max(1.0, np.max(np.abs(yhat))))
    assert oracle.loss(cfg, params, tokens, targets) == pytest.approx(0.5 * np.mean((yhat - targets) ** 2), rel=1e-8, abs=1e-12)


def test_zero_params_leave_the_stream_unchanged_and_read_the_last_coordinate():
    for cfg, last in ((StackConfig(3, mlp=True, layer_norm=True), "token"), (StackConfig(3, positional_size=4, mlp=True), "pe")):
        tokens = np.random.default_rng(1).standard_normal((2, 5, 3))
        states = oracle.forward(cfg, zero_params(cfg), tokens)
        for h in states[1:]:
            np.testing.assert_array_equal(h, states[0])
        expected = -tokens[:, -1, -1] if last == "token" else np.full(2, -sinusoidal_encoding(5, 4)[-1, -1])
        np.testing.assert_array_equal(oracle.predict(cfg, zero_params(cfg), tokens), expected)


# --- attention: the key mask, the softmax, the linear scores ------------------------------------------


@settings(max_examples=30)
@given(stack_cases())
def test_attention_maps_have_one_column_per_key(case):
    cfg, params, tokens, _, _ = case
    n_keys = tokens.shape[1] if cfg.query_attended else tokens.shape[1] - 1
    maps = oracle.attention_maps(cfg, params, tokens)
    assert [m.shape for m in maps] == [(tokens.shape[0], cfg.n_heads, tokens.shape[1], n_keys)] * cfg.n_layers


@settings(max_examples=30)
@given(stack_cases())
def test_softmax_rows_are_distributions_over_the_keys(case):
    cfg, params, tokens, _, _ = case
    for kind, mix in zip(cfg.attention, oracle.attention_maps(cfg, params, tokens)):
        if kind == "softmax":
            assert np.all(mix >= 0) and np.all(mix <= 1)
            np.testing.assert_allclose(mix.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


@settings(max_examples=30)
@given(stack_cases())
def test_the_query_token_reaches_no_other_row_unless_it_is_attended(case):
    cfg, params, tokens, _, rng = case
    moved = tokens.copy()
    moved[:, -1] += rng.standard_normal(moved[:, -1].shape)
    before, after = oracle.forward(cfg, params, tokens), oracle.forward(cfg, params, moved)
    maps_before, maps_after = oracle.attention_maps(cfg, params, tokens), oracle.attention_maps(cfg, params, moved)
    if not cfg.query_attended:
        # every key and value is computed from rows 0 .. T-2, which the query cannot reach
        for h0, h1 in zip(before, after):
            np.testing.assert_allclose(h1[:, :-1], h0[:, :-1], rtol=1e-13, atol=1e-13 * max(1.0, np.max(np.abs(h0))))
        for m0, m1 in zip(maps_before, maps_after):
            np.testing.assert_allclose(m1[..., :-1, :], m0[..., :-1, :], rtol=1e-13, atol=1e-13 * max(1.0, np.max(np.abs(m0))))
    else:
        # the query is the last key: the context rows of h_1 see it
        assert not np.allclose(after[1][:, :-1], before[1][:, :-1], rtol=1e-10, atol=0)


@settings(max_examples=30)
@given(stack_cases())
def test_linear_scores_are_q_k_transpose_and_softmax_maps_its_scaled_softmax(case):
    cfg, params, tokens, _, _ = case
    if cfg.layer_norm:
        cfg = StackConfig(**{**cfg.__dict__, "layer_norm": False})
        params = {name: v for name, v in params.items() if name in param_shapes(cfg)}
    states, maps = oracle.forward(cfg, params, tokens), oracle.attention_maps(cfg, params, tokens)
    n_keys = tokens.shape[1] if cfg.query_attended else tokens.shape[1] - 1
    for layer, (kind, mix) in enumerate(zip(cfg.attention, maps)):
        a = states[layer]
        for j in range(cfg.n_heads):
            q = a @ params[f"layer{layer}.w_q"][j]
            k = a[:, :n_keys] @ params[f"layer{layer}.w_k"][j]
            scores = q @ k.swapaxes(-1, -2)
            if kind == "linear":
                np.testing.assert_allclose(mix[:, j], scores, rtol=1e-13, atol=1e-13 * max(1.0, np.max(np.abs(scores))))
            else:
                weights = np.exp(scores / np.sqrt(cfg.width) - np.max(scores / np.sqrt(cfg.width), axis=-1, keepdims=True))
                np.testing.assert_allclose(mix[:, j], weights / weights.sum(axis=-1, keepdims=True), rtol=1e-12, atol=1e-14)


# --- cross-check: linear layers without extras are von Oswald's LSA ------------------------------------


@settings(max_examples=20)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.booleans(), st.integers(2, 7), st.integers(1, 3), seeds)
def test_a_stack_of_plain_linear_layers_is_the_lsa(d, n_layers, n_heads, query_attended, n_tokens, batch, seed):
    """With key and value size D = d + 1 the LSA's weights (H, D, D) are the stack's, under the
    same names; both read yhat = -h[query, last] and report the half-MSE."""
    cfg = StackConfig(token_size=d + 1, attention=("linear",) * n_layers, n_heads=n_heads, query_attended=query_attended)
    lsa = iclgd.LSAConfig(d=d, n_layers=n_layers, n_heads=n_heads, include_query=query_attended)
    assert param_shapes(cfg) == iclgd.param_shapes(lsa)
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng, 0.5)
    tokens, targets = rng.standard_normal((batch, n_tokens, d + 1)), rng.standard_normal(batch)
    engine = iclgd.get_backend("numpy")
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(oracle.predict(cfg, params, tokens), engine.predict(lsa, params, tokens), **tol)
    batch_ = iclgd.Batch(tokens=tokens, targets=targets, weights=np.zeros((batch, d)))
    lsa_loss, lsa_grads = engine.loss_and_grad(lsa, params, batch_)
    loss, grads = oracle.loss_and_grad(cfg, params, tokens, targets)
    assert loss == pytest.approx(lsa_loss, rel=1e-10, abs=1e-14)
    for name in params:
        np.testing.assert_allclose(grads[name], lsa_grads[name], rtol=1e-9, atol=1e-12 * max(1.0, np.max(np.abs(lsa_grads[name]))), err_msg=name)
    # the LSA's sensitivity d yhat / d x_q is the query row's x-part of the input gradient
    np.testing.assert_allclose(oracle.prediction_input_grad(cfg, params, tokens)[:, -1, :d],
                               engine.sensitivity(lsa, params, tokens), **tol)


# --- fixed functions -----------------------------------------------------------------------------------


def test_sinusoidal_encoding_matches_hand_computed_entries():
    pe = sinusoidal_encoding(4, 4)  # frequencies 1 and 1/100
    assert pe.shape == (4, 4)
    np.testing.assert_array_equal(pe[0], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(pe[1], [0.8414709848078965, 0.5403023058681398, 0.009999833334166664, 0.9999500004166653], rtol=1e-15)
    np.testing.assert_allclose(pe[3], [0.1411200080598672, -0.9899924966004454, 0.02999550020249566, 0.9995500337489875], rtol=1e-14)
    pe6 = sinusoidal_encoding(3, 6)  # frequencies 1, 10000^(-1/3), 10000^(-2/3)
    assert pe6[2, 2] == pytest.approx(math.sin(2 / 10000 ** (1 / 3)), rel=1e-14)
    assert pe6[2, 5] == pytest.approx(math.cos(2 / 10000 ** (2 / 3)), rel=1e-14)
    assert sinusoidal_encoding(5, 0).shape == (5, 0)


def test_the_stream_starts_with_the_tokens_then_the_encoding():
    cfg = StackConfig(token_size=2, attention=("linear",), positional_size=4)
    tokens = np.random.default_rng(2).standard_normal((3, 6, 2))
    h0 = oracle.forward(cfg, init_params(cfg, 0), tokens)[0]
    np.testing.assert_array_equal(h0[..., :2], tokens)
    np.testing.assert_array_equal(h0[..., 2:], np.broadcast_to(sinusoidal_encoding(6, 4), (3, 6, 4)))


def test_gelu_is_the_tanh_approximation():
    assert gelu(1.0) == pytest.approx(0.8411919906082768, rel=1e-15)  # jax.nn.gelu(1.0) = 0.841192
    assert gelu(-1.0) == pytest.approx(-0.1588080093917233, rel=1e-14)
    assert gelu(0.0) == 0.0
    u = np.linspace(-6, 6, 121)
    expected = [0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))) for x in u]
    np.testing.assert_allclose(gelu(u), expected, rtol=1e-14, atol=1e-15)


@given(st.floats(-8, 8))
def test_gelu_grad_is_the_central_finite_difference(u):
    step = 1e-5
    difference = (gelu(np.longdouble(u) + step) - gelu(np.longdouble(u) - step)) / (2 * step)
    assert gelu_grad(u) == pytest.approx(float(difference), rel=1e-8, abs=1e-10)


# --- init ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "name", "fan"), [
    (StackConfig(token_size=300, attention=("linear",)), "layer0.w_q", 300),
    (StackConfig(token_size=100, attention=("softmax",), mlp=True), "layer0.mlp.w_out", 400),
    (StackConfig(token_size=2, attention=("linear",), embedding="mlp", d_embed=8, d_embed_hidden=4000), "embed.mlp.w_out", 4000),
])
def test_init_weights_have_std_sqrt_scale_over_fan_in_within_two_sigma_bounds(cfg, name, fan):
    scale = 0.7
    params = init_params(cfg, 0, scale)
    assert fan_in(cfg, name) == fan
    w = params[name]
    target = math.sqrt(scale / fan)
    assert np.std(w) == pytest.approx(target, rel=0.03)
    assert abs(np.mean(w)) < 0.03 * target
    assert np.max(np.abs(w)) <= 2 * target / TRUNCATED_STD
    assert np.max(np.abs(w)) > 0.95 * 2 * target / TRUNCATED_STD  # the bound is reached: truncated, not clipped small


def test_init_fan_ins_biases_and_layer_norm():
    cfg = StackConfig(token_size=3, attention=("softmax", "linear"), embedding="mlp", d_embed=6, d_embed_hidden=5,
                      layer_norm=True, mlp=True)
    fans = {name: fan_in(cfg, name) for name in param_shapes(cfg)}
    assert fans["embed.w"] == 3 and fans["embed.mlp.w_in"] == 6 and fans["embed.mlp.w_out"] == 5
    assert all(fans[f"layer1.{n}"] == 6 for n in ("w_q", "w_k", "w_v", "w_o", "mlp.w_in"))
    assert fans["layer1.mlp.w_out"] == 24
    params = init_params(cfg, 3)
    for name, value in params.items():
        if name.endswith("ln.weight"):
            np.testing.assert_array_equal(value, 1.0)
        elif fans[name] is None:
            np.testing.assert_array_equal(value, 0.0)
        else:
            assert np.all(value != 0)


def test_init_is_reproducible_from_a_seed_or_a_generator():
    cfg = StackConfig(token_size=2, attention=("softmax", "linear"), positional_size=2, mlp=True)
    a, b = init_params(cfg, 5), init_params(cfg, np.random.default_rng(5))
    c = init_params(cfg, 6)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["layer0.w_q"], c["layer0.w_q"])


# --- float32 -------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(stack_cases(dtype="float32"))
def test_float32_configs_compute_in_float32_close_to_float64(case):
    cfg32, params, tokens, targets, _ = case
    assume(bounded(cfg32, params, tokens))
    cfg64 = StackConfig(**{**cfg32.__dict__, "dtype": "float64"})
    states = oracle.forward(cfg32, params, tokens)
    assert all(h.dtype == np.float32 for h in states)
    assert all(m.dtype == np.float32 for m in oracle.attention_maps(cfg32, params, tokens))
    assert oracle.predict(cfg32, params, tokens).dtype == np.float32
    loss32, grads32 = oracle.loss_and_grad(cfg32, params, tokens, targets)
    assert all(g.dtype == np.float32 for g in grads32.values())
    assert oracle.prediction_input_grad(cfg32, params, tokens).dtype == np.float32
    assert oracle.stream_vjp(cfg32, params, tokens, cfg32.n_layers, np.ones_like(states[-1])).dtype == np.float32
    loss64, grads64 = oracle.loss_and_grad(cfg64, params, tokens, targets)
    assert loss32 == pytest.approx(loss64, rel=1e-3, abs=1e-5)
    for name in grads64:
        scale = max(1.0, np.max(np.abs(grads64[name])))
        np.testing.assert_allclose(grads32[name], grads64[name], rtol=0, atol=1e-3 * scale, err_msg=name)


def test_init_params_in_float32_are_float32():
    cfg = StackConfig(token_size=2, embedding="mlp", d_embed=4, d_embed_hidden=8, layer_norm=True, mlp=True, dtype="float32")
    assert all(v.dtype == np.float32 for v in init_params(cfg, 0).values())
    assert all(v.dtype == np.float32 for v in zero_params(cfg).values())


# --- bad inputs ----------------------------------------------------------------------------------------


def small_case():
    cfg = StackConfig(token_size=3, attention=("softmax", "linear"), positional_size=2, layer_norm=True)
    rng = np.random.default_rng(0)
    return cfg, init_params(cfg, 0), rng.standard_normal((2, 4, 3)), rng.standard_normal(2)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(attention=("softmax", "cosine")), "unknown attention kind is 'cosine'"),
    (dict(attention="softmax"), "one kind per layer"),
    (dict(attention=()), "at least one layer"),
    (dict(positional_size=3), "positional_size must be even"),
    (dict(positional_size=-2), "positional_size"),
    (dict(n_heads=0), "n_heads"),
    (dict(embedding="linear"), "embedding must be one of"),
    (dict(embedding="mlp", positional_size=2), "positional_size must be 0"),
    (dict(layer_norm=1), "layer_norm must be True or False"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_configs_are_refused_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StackConfig(token_size=2, **kwargs)


def test_wrong_token_size_is_refused():
    cfg, params, tokens, _ = small_case()
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T, D = 3\)"):
        oracle.predict(cfg, params, tokens[..., :2])
    with pytest.raises(ValueError, match="T >= 2"):
        oracle.predict(cfg, params, tokens[:, :1])
    with pytest.raises(ValueError, match="finite"):
        oracle.predict(cfg, params, np.full_like(tokens, np.nan))


def test_wrong_or_missing_params_are_refused():
    cfg, params, tokens, targets = small_case()
    with pytest.raises(ValueError, match=r"params\['layer1.w_k'\] must have shape \(1, 5, 5\)"):
        oracle.loss_and_grad(cfg, {**params, "layer1.w_k": np.zeros((1, 5, 4))}, tokens, targets)
    missing = {name: v for name, v in params.items() if name != "layer0.ln.bias"}
    with pytest.raises(ValueError, match=r"missing \['layer0.ln.bias'\]"):
        oracle.forward(cfg, missing, tokens)
    with pytest.raises(ValueError, match=r"unexpected \['layer0.mlp.w_in'\]"):
        oracle.forward(cfg, {**params, "layer0.mlp.w_in": np.zeros((5, 20))}, tokens)


def test_wrong_targets_layer_upstream_and_scale_are_refused():
    cfg, params, tokens, targets = small_case()
    with pytest.raises(ValueError, match=r"targets must have shape \(B,\) = \(2,\)"):
        oracle.loss(cfg, params, tokens, targets[:1])
    with pytest.raises(ValueError, match="layer"):
        oracle.stream_vjp(cfg, params, tokens, 3, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"upstream must have the shape of the stream \(B, T, C\) = \(2, 4, 5\)"):
        oracle.stream_vjp(cfg, params, tokens, 1, np.zeros((2, 4, 3)))
    for scale in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            init_params(cfg, 0, scale)


def test_a_pass_that_overflows_is_reported_naming_the_inputs():
    cfg = StackConfig(token_size=2, attention=("linear",) * 3, dtype="float32")
    params = {name: np.full(shape, 1e3) for name, shape in param_shapes(cfg).items()}
    with pytest.raises(ValueError, match="too large for this attention stack in float32"):
        oracle.predict(cfg, params, np.full((1, 3, 2), 1e3))
