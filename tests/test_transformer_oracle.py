"""The NumPy oracle of the developmental-landscape transformer (iclgd.backends.numpy_transformer).

Read as a specification: its hand-written gradients are central finite differences of its loss
(also per position, weighted), it is causal, equivariant under permutations of the batch, equal
to an independent loop-by-loop transcription of ``iclgd.models.transformer``'s docstring, and to a
case computed by hand; the paper's model has 51,717 parameters, initialised as PyTorch; float32
follows float64.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from parity import check_all, check_tensor
from strategies import random_interleaved, random_transformer_params, seeds, transformer_cases, transformer_configs

from iclgd.backends import numpy_transformer
from iclgd.backends.numpy_transformer import TransformerOracle, attention_patterns
from iclgd.models.transformer import TransformerConfig, fan_in, init_params, param_count, param_shapes

oracle = TransformerOracle()

#: Finite differences: step STEP * max(1, |theta|); tensors with more than ENTRIES entries are
#: checked at ENTRIES of them (their largest analytic entry and a seeded random rest).
STEP = 1e-5
ENTRIES = 20
#: The finite-difference checks redraw models whose output exceeds this: without LayerNorm a deep
#: random model at std ~1 reaches outputs of 1e7 (softmax) to 1e30 (linear attention, a polynomial
#: of degree 3^L), where the loss's own rounding, eps |L| / h, exceeds its change along any one
#: parameter and no central difference resolves a gradient to 1e-6.
MAX_OUTPUT = 1e4


def in_dtype(cfg, *arrays):
    """The arrays cast to cfg.dtype, as the backends' checks hand them to the oracle."""
    return tuple(np.asarray(a, dtype=cfg.dtype) for a in arrays)


def checked_entries(analytic: np.ndarray, rng: np.random.Generator) -> list[tuple]:
    """Every index of a small tensor; for a larger one the index of its largest analytic entry
    (so that the tensor's scale is in the sample) and ENTRIES - 1 others drawn by ``rng``."""
    if analytic.size <= ENTRIES:
        return list(np.ndindex(analytic.shape))
    largest = int(np.argmax(np.abs(analytic)))
    others = rng.choice(np.delete(np.arange(analytic.size), largest), ENTRIES - 1, replace=False)
    return [np.unravel_index(int(i), analytic.shape) for i in sorted([largest, *others])]


def finite_difference_check(cfg, params, tokens, targets, weights, grads, rng) -> tuple[dict, int, int]:
    """{name: (analytic, finite difference)} at the checked entries of every parameter for the
    loss sum_k weights[k] L_k, and (skipped, checked).

    The finite difference is the Richardson extrapolation (4 D(h/2) - D(h)) / 3 of the central
    differences D(h) = (L(theta + h) - L(theta - h)) / 2h, exact to O(h^4): D(h) alone keeps
    h^2 L'''(theta) / 6, up to 1e-6 of a gradient in the deeper draws.  The loss is evaluated by
    the oracle's own forward in extended precision (np.longdouble, eps 1e-19; the oracle computes
    in the dtype of its inputs): a tensor whose gradient is 1e-7 of the loss would otherwise drown
    in the float64 rounding of the loss, about 1e-16 |L| / h.
    An entry is skipped when a ReLU unit changes sign between theta - h and theta + h: a kink
    inside the stencil, where the difference is off by a fraction of the jump in the derivative;
    the kink is seen exactly, in the active-unit pattern at both ends (at h = 1e-5 the path is
    straight, so no unit flips and flips back in between)."""
    extended = {name: value.astype(np.longdouble) for name, value in params.items()}
    tokens, targets, weights = (np.asarray(a, dtype=np.longdouble) for a in (tokens, targets, weights))

    def loss_and_pattern(p):
        states, cache = numpy_transformer.forward(cfg, p, tokens)
        residual = numpy_transformer.read_out(states[-1]) - targets
        pattern = np.concatenate([(blk.mlp.hidden > 0).ravel() for blk in cache.blocks])
        return weights @ np.mean(residual * residual, axis=0), pattern

    compared, skipped, checked = {}, 0, 0
    for name, value in extended.items():
        value = value.copy()
        perturbed = {**extended, name: value}
        analytic, numeric = [], []
        for index in checked_entries(grads[name], rng):
            original = value[index]
            step = STEP * max(1.0, abs(float(original)))
            values, patterns = [], []
            for offset in (step, -step, step / 2, -step / 2):
                value[index] = original + offset
                loss, pattern = loss_and_pattern(perturbed)
                values.append(loss)
                patterns.append(pattern)
            value[index] = original
            checked += 1
            if not np.array_equal(patterns[0], patterns[1]):
                skipped += 1
                continue
            wide = (values[0] - values[1]) / (2 * step)
            narrow = (values[2] - values[3]) / step
            analytic.append(grads[name][index])
            numeric.append(float((4 * narrow - wide) / 3))
        compared[name] = (np.array(analytic), np.array(numeric))
    return compared, skipped, checked


# --- 1. gradients --------------------------------------------------------------------------------------


def deep_case_without_layer_norm(attention: str, std: float):
    """3 blocks, no LayerNorm (the drawn cases of this kind mostly exceed MAX_OUTPUT): a case at
    a std that keeps the output moderate."""
    cfg = TransformerConfig(d=3, n_examples=4, n_layers=3, n_heads=2, d_model=8, d_mlp=8, layer_norm=False, attention=attention)
    tokens, targets = random_interleaved(cfg, 2, 8)
    return cfg, random_transformer_params(cfg, 7, std), tokens, targets


@settings(max_examples=20, deadline=None)
@given(transformer_cases(max_batch=3), seeds)
@example(deep_case_without_layer_norm("linear", 0.3), 0)
@example(deep_case_without_layer_norm("softmax", 0.5), 1)
def test_hand_written_gradients_equal_central_finite_differences(case, seed):
    """Every parameter's gradient, on its own scale, to 1e-6 relative: 1-3 layers, 1-4 heads,
    d_model <= 32, d_mlp <= 32, LN and output projection on or off, softmax or linear, K <= 8, D <= 5."""
    cfg, params, tokens, targets = case
    assume(np.max(np.abs(oracle._forward(cfg, params, tokens)[-1])) <= MAX_OUTPUT)
    loss, grads = oracle._loss_and_grad(cfg, params, tokens, targets)
    assert loss == oracle._loss(cfg, params, tokens, targets)
    assert list(grads) == list(params) and all(grads[n].shape == params[n].shape for n in params)
    uniform = np.full(cfg.n_examples, 1.0 / cfg.n_examples)  # the MSE: mean_k L_k
    compared, skipped, checked = finite_difference_check(cfg, params, tokens, targets, uniform, grads, np.random.default_rng(seed))
    assert skipped <= checked // 10, f"{skipped} of {checked} entries straddle a ReLU kink"
    check_all(compared, rtol=1e-6)


@settings(max_examples=8, deadline=None)
@given(transformer_cases(max_layers=2, max_batch=3), seeds)
def test_weighted_per_position_loss_gradient_equals_central_finite_differences(case, seed):
    """L = sum_k w_k L_k for arbitrary non-negative weights (some zero): its value and gradient."""
    cfg, params, tokens, targets = case
    assume(np.max(np.abs(oracle._forward(cfg, params, tokens)[-1])) <= MAX_OUTPUT)
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.0, 2.0, cfg.n_examples) * (rng.random(cfg.n_examples) < 0.7)
    loss, grads = oracle._loss_and_grad_weighted(cfg, params, tokens, targets, weights)
    per_position = oracle._per_position_loss(cfg, params, tokens, targets)
    assert loss == pytest.approx(float(weights @ per_position), rel=1e-13)
    compared, skipped, checked = finite_difference_check(cfg, params, tokens, targets, weights, grads, rng)
    assert skipped <= checked // 10
    check_all(compared, rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(transformer_cases())
def test_mse_gradient_is_the_weighted_gradient_with_weights_one_over_k(case):
    cfg, params, tokens, targets = case
    loss, grads = oracle._loss_and_grad(cfg, params, tokens, targets)
    uniform = np.full(cfg.n_examples, 1.0 / cfg.n_examples)
    weighted_loss, weighted_grads = oracle._loss_and_grad_weighted(cfg, params, tokens, targets, uniform)
    assert weighted_loss == pytest.approx(loss, rel=1e-13)
    check_all({name: (weighted_grads[name], grads[name]) for name in grads}, rtol=1e-13)


@settings(max_examples=15, deadline=None)
@given(transformer_cases())
def test_loss_is_the_mean_of_the_per_position_losses_and_of_the_squared_errors(case):
    cfg, params, tokens, targets = case
    residual = oracle._predict(cfg, params, tokens) - targets
    per_position = oracle._per_position_loss(cfg, params, tokens, targets)
    assert per_position.shape == (cfg.n_examples,)
    np.testing.assert_allclose(per_position, np.mean(residual**2, axis=0), rtol=1e-14)
    assert oracle._loss(cfg, params, tokens, targets) == pytest.approx(np.mean(residual**2), rel=1e-13)


# --- 2. causality ----------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(transformer_cases(), st.data())
def test_output_rows_before_a_token_ignore_every_change_from_that_token_on(case, data):
    """Changing tokens t >= cut leaves rows < cut of every residual state and of the output,
    and so every prediction yhat_k read at a row 2k < cut (0-based k: x_k and what precedes it),
    exactly unchanged."""
    cfg, params, tokens, _ = case
    cut = data.draw(st.integers(1, cfg.n_tokens - 1), label="cut")
    changed = tokens.copy()
    changed[:, cut:] = np.random.default_rng(cut).standard_normal(changed[:, cut:].shape) * 3.0
    before, after = oracle._forward(cfg, params, tokens), oracle._forward(cfg, params, changed)
    for state_before, state_after in zip(before, after):
        np.testing.assert_array_equal(state_after[:, :cut], state_before[:, :cut])
    seen = (cut + 1) // 2  # positions k (0-based) with 2k < cut
    np.testing.assert_array_equal(oracle._predict(cfg, params, changed)[:, :seen], oracle._predict(cfg, params, tokens)[:, :seen])


@settings(max_examples=15, deadline=None)
@given(transformer_cases(), st.data())
def test_prediction_at_x_k_ignores_the_label_y_k(case, data):
    """yhat_k is read at x_k's token (row 2k - 2, 1-based k): its own label y_k (the next token,
    index >= 2k - 1) and everything after it cannot leak into it."""
    cfg, params, tokens, _ = case
    k = data.draw(st.integers(1, cfg.n_examples), label="k")
    changed = tokens.copy()
    changed[:, 2 * k - 1:] += 10.0
    np.testing.assert_array_equal(oracle._predict(cfg, params, changed)[:, k - 1], oracle._predict(cfg, params, tokens)[:, k - 1])


# --- 3. batch equivariance --------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(transformer_cases(max_batch=6), seeds)
def test_permuting_the_batch_permutes_the_output(case, seed):
    cfg, params, tokens, _ = case
    order = np.random.default_rng(seed).permutation(tokens.shape[0])
    out = oracle._forward(cfg, params, tokens)[-1]
    check_tensor("output of the permuted batch", oracle._forward(cfg, params, tokens[order])[-1], out[order], rtol=1e-13)


# --- 4. an independent transcription ----------------------------------------------------------------------


def reference_forward(cfg, params, tokens) -> list[np.ndarray]:
    """The model's docstring transcribed loop by loop (sequence, token, head), no caches, no
    batching: the same list as ``_forward``, [h_0, ..., h_L, out]."""
    batch, n_tokens, _ = tokens.shape
    width, n_heads = cfg.d_model, cfg.n_heads
    head = width // n_heads

    def layer_norm(x, prefix):
        if not cfg.layer_norm:
            return x
        mean = sum(x) / width
        variance = sum((x - mean) ** 2) / width
        return (x - mean) / math.sqrt(variance + 1e-5) * params[prefix + ".weight"] + params[prefix + ".bias"]

    states = [np.zeros((batch, n_tokens, width)) for _ in range(cfg.n_layers + 1)]
    out = np.zeros((batch, n_tokens, cfg.token_size))
    for b in range(batch):
        h = [tokens[b, t] @ params["embed.w"] + params["embed.pos"][t] for t in range(n_tokens)]
        states[0][b] = h
        for layer in range(cfg.n_layers):
            p = {name[len(f"block{layer}."):]: value for name, value in params.items() if name.startswith(f"block{layer}.")}
            qkv = [layer_norm(h[t], f"block{layer}.ln1") @ p["attn.w_qkv"] for t in range(n_tokens)]
            after_attention = []
            for t in range(n_tokens):
                z = np.zeros(width)
                for j in range(n_heads):
                    cols = slice(j * head, (j + 1) * head)
                    query = qkv[t][:width][cols]
                    keys = [qkv[s][width:2 * width][cols] for s in range(t + 1)]  # causal: s <= t
                    values = [qkv[s][2 * width:][cols] for s in range(t + 1)]
                    scores = [float(query @ key) / math.sqrt(head) for key in keys]
                    if cfg.attention == "softmax":
                        top = max(scores)
                        weights = [math.exp(s - top) for s in scores]
                        weights = [w / sum(weights) for w in weights]
                    else:
                        weights = scores
                    z[cols] = sum(w * v for w, v in zip(weights, values))
                after_attention.append(h[t] + (z @ p["attn.w_out"] if cfg.output_projection else z))
            h = []
            for t in range(n_tokens):
                x = after_attention[t]
                hidden = np.maximum(layer_norm(x, f"block{layer}.ln2") @ p["mlp.w_in"] + p["mlp.b_in"], 0.0)
                h.append(x + hidden @ p["mlp.w_out"] + p["mlp.b_out"])
            states[layer + 1][b] = h
        for t in range(n_tokens):
            out[b, t] = layer_norm(h[t], "unembed.ln") @ params["unembed.w"] + params["unembed.b"]
    return [*states, out]


@settings(max_examples=8, deadline=None)
@given(transformer_cases(max_examples=5))
def test_forward_equals_an_independent_loop_over_sequences_tokens_and_heads(case):
    cfg, params, tokens, _ = case
    got, expected = oracle._forward(cfg, params, tokens), reference_forward(cfg, params, tokens)
    assert len(got) == cfg.n_layers + 2
    names = ["h_0 (embedding)"] + [f"h_{l + 1} (block {l})" for l in range(cfg.n_layers)] + ["output"]
    check_all({name: (g, e) for name, g, e in zip(names, got, expected)}, rtol=1e-12)


@settings(max_examples=10, deadline=None)
@given(transformer_cases())
def test_attention_patterns_are_causal_and_softmax_rows_are_distributions(case):
    cfg, params, tokens, _ = case
    patterns = attention_patterns(cfg, params, tokens)
    assert len(patterns) == cfg.n_layers
    future = np.triu(np.ones((cfg.n_tokens, cfg.n_tokens), dtype=bool), 1)
    for pattern in patterns:
        assert pattern.shape == (tokens.shape[0], cfg.n_heads, cfg.n_tokens, cfg.n_tokens)
        assert np.all(pattern[..., future] == 0.0)
        if cfg.attention == "softmax":
            assert np.all(pattern >= 0.0)
            np.testing.assert_allclose(pattern.sum(axis=-1), 1.0, rtol=1e-13)


# --- 5. the paper's model -------------------------------------------------------------------------------


def test_paper_model_has_51717_parameters():
    cfg = TransformerConfig()
    assert param_count(cfg) == 51_717
    assert sum(value.size for value in init_params(cfg, 0).values()) == 51_717


def test_init_sets_layer_norm_weights_to_one_and_biases_to_zero():
    params = init_params(TransformerConfig(), 0)
    norms = [name for name in params if ".ln" in name]
    assert len(norms) == 2 * (2 * 2 + 1)  # ln1, ln2 per block and the final LN; weight and bias each
    for name in norms:
        np.testing.assert_array_equal(params[name], 1.0 if name.endswith("weight") else 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_init_draws_every_linear_entry_uniformly_within_one_over_sqrt_fan_in(seed):
    """|entry| <= 1/sqrt(fan_in), and for matrices of >= 1000 entries the sample variance is
    bound^2 / 3 (U(-a, a)) within 5 standard errors (0.894 / sqrt(n) relative)."""
    cfg = TransformerConfig()
    params = init_params(cfg, seed)
    for name, value in params.items():
        if fan_in(cfg, name) is None:
            continue
        bound = 1.0 / math.sqrt(fan_in(cfg, name))
        assert np.max(np.abs(value)) <= bound, name
        if value.size >= 1000:
            expected = bound**2 / 3
            assert abs(np.var(value) / expected - 1.0) <= 5 * 0.894 / math.sqrt(value.size), name


# --- 6. float32 ------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(transformer_configs(), seeds)
def test_float32_forward_equals_float64_forward(cfg64, seed):
    """At the init's scale, every state and the output to 1e-4 relative (of its largest entry);
    gradients and predictions stay float32."""
    cfg32 = TransformerConfig(**{**cfg64.__dict__, "dtype": "float32"})
    params = init_params(cfg64, seed)
    tokens, targets = random_interleaved(cfg64, 8, seed)
    params32 = {name: value.astype(np.float32) for name, value in params.items()}
    tokens32, targets32 = in_dtype(cfg32, tokens, targets)
    states64 = oracle._forward(cfg64, {n: v.astype(np.float64) for n, v in params32.items()}, tokens32.astype(np.float64))
    states32 = oracle._forward(cfg32, params32, tokens32)
    assert all(state.dtype == np.float32 for state in states32)
    check_all({f"state {i}": (s32, s64) for i, (s32, s64) in enumerate(zip(states32, states64))}, rtol=1e-4)
    assert oracle._predict(cfg32, params32, tokens32).dtype == np.float32
    _, grads = oracle._loss_and_grad_weighted(cfg32, params32, tokens32, targets32, np.ones(cfg32.n_examples))
    assert all(grad.dtype == np.float32 for grad in grads.values())


# --- 7. a case by hand -------------------------------------------------------------------------------------


def test_linear_attention_without_layer_norm_matches_a_hand_computed_case():
    """D = 1, K = 1, d_model = 1, one head, d_mlp = 2, linear attention, no LN, with projection."""
    cfg = TransformerConfig(d=1, n_examples=1, n_layers=1, n_heads=1, d_model=1, d_mlp=2,
                            layer_norm=False, output_projection=True, attention="linear")
    params = {
        "embed.w": np.array([[1.0], [1.0]]), "embed.pos": np.array([[0.0], [0.0]]),
        "block0.attn.w_qkv": np.array([[1.0, 2.0, 3.0]]), "block0.attn.w_out": np.array([[0.5]]),
        "block0.mlp.w_in": np.array([[1.0, -1.0]]), "block0.mlp.b_in": np.array([-1.0, 0.0]),
        "block0.mlp.w_out": np.array([[2.0], [5.0]]), "block0.mlp.b_out": np.array([1.0]),
        "unembed.w": np.array([[2.0, 7.0]]), "unembed.b": np.array([1.0, -1.0]),
    }
    assert set(params) == set(param_shapes(cfg))
    tokens = np.array([[[0.0, 1.0], [2.0, 0.0]]])  # (x_1 = 1) then (y_1 = 2)
    # h_0 = tokens W_e + P = (1, 2).  q = h, k = 2h, v = 3h: q = (1, 2), k = (2, 4), v = (3, 6); c = 1.
    # A = [[1*2, masked 0], [2*2, 2*4]] = [[2, 0], [4, 8]];  Z = A v = (2*3, 4*3 + 8*6) = (6, 60).
    # h = h + 0.5 Z = (1 + 3, 2 + 30) = (4, 32).
    # MLP: u = (h - 1, -h): row 0 (3, -4) -> ReLU (3, 0) -> 3*2 + 1 = 7;  row 1 (31, -32) -> 31*2 + 1 = 63.
    # h = (4 + 7, 32 + 63) = (11, 95).  out = h (2, 7) + (1, -1) = [[23, 76], [191, 664]].
    states = oracle._forward(cfg, params, tokens)
    np.testing.assert_array_equal(states[0], [[[1.0], [2.0]]])
    np.testing.assert_array_equal(states[1], [[[11.0], [95.0]]])
    np.testing.assert_array_equal(states[-1], [[[23.0, 76.0], [191.0, 664.0]]])
    np.testing.assert_array_equal(attention_patterns(cfg, params, tokens)[0], [[[[2.0, 0.0], [4.0, 8.0]]]])
    np.testing.assert_array_equal(oracle._predict(cfg, params, tokens), [[23.0]])
    assert oracle._loss(cfg, params, tokens, np.array([[20.0]])) == 9.0  # (23 - 20)^2, no factor 1/2


def test_sensitivity_is_refused_as_an_lsa_quantity():
    cfg = TransformerConfig(d=1, n_examples=1, n_layers=1, n_heads=1, d_model=2, d_mlp=2)
    tokens, _ = random_interleaved(cfg, 1, 0)
    with pytest.raises(ValueError, match="LSA family"):
        oracle._sensitivity(cfg, init_params(cfg, 0), tokens)


def test_paper_model_loss_and_gradient_are_finite_at_init():
    cfg = TransformerConfig()
    tokens, targets = random_interleaved(cfg, 16, 0)
    loss, grads = oracle._loss_and_grad(cfg, init_params(cfg, 0), tokens, targets)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    assert all(np.any(grads[name] != 0.0) for name in grads if not name.startswith("embed.pos"))
