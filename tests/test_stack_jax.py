"""The jax engine of the attention stack (iclgd.backends.jax_stack) is held to the hand-written NumPy
oracle (iclgd.backends.numpy_stack): on drawn small configs (1-3 layers of drawn kinds, 1-2 heads,
positional size 0/2/4, embedding none/mlp, LayerNorm and MLP on/off, query attended or not),
parameters and batches, every function - the streams, the attention maps, the predictions, the
loss, its gradient, the stream and prediction gradients with respect to the tokens - agrees with
the oracle's to 1e-9 of each tensor's own largest entry in float64 (tests/parity.py names the
tensor that differs), and in float32 to 1e-4 or to twice the float32 oracle's own distance from
the exact answer; its jitted train step is one step of clipping, Adam and -lr on the oracle's
gradient (iclgd.optim), and parameters outside ``trainable`` do not move.

Compilation dominates the time of this file (each drawn config compiles each function anew), so
the drawn configs are tiny and the examples few.  jax's
global configuration is left as it is: other test modules share the process."""
from dataclasses import replace

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax engine needs jax and optax: pip install 'iclgd[jax]'")
pytest.importorskip("optax", reason="the jax engine needs jax and optax: pip install 'iclgd[jax]'")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from parity import check_all  # noqa: E402

from iclgd.backends import jax_stack  # noqa: E402
from iclgd.backends import numpy_stack as oracle  # noqa: E402
from iclgd.models.stack import ATTENTION_KINDS, StackConfig, init_params, min_tokens, param_shapes  # noqa: E402
from iclgd.optim import AdamState, adam_chain_state, adam_state_of, chain, clip_by_global_norm, scale_by_adam, scale_by_learning_rate  # noqa: E402

RTOL = {"float64": 1e-9, "float32": 1e-4}
#: a floor on the scale a tensor is judged on (parity.py's atol_scale): a tensor that is zero in
#: exact arithmetic (a one-key softmax's query gradient) may come out as round-off in either engine
ATOL_SCALE = {"float64": 1e-6, "float32": 1e-3}
EXAMPLES = settings(max_examples=4, deadline=None)
#: the gradients compile several times slower than the forward functions: fewer drawn configs
GRADIENT_EXAMPLES = settings(max_examples=3, deadline=None)
FLOAT32_EXAMPLES = settings(max_examples=2, deadline=None)


@st.composite
def stack_cases(draw, dtype: str = "float64", max_layers: int = 3):
    """(cfg, params, tokens (B, T, D), targets (B,)): a tiny drawn config; params from the
    authors' init plus a small perturbation (so that biases, LN parameters and every gradient are
    generic), tokens and targets standard normal."""
    n_layers = draw(st.integers(1, max_layers))
    embedding = draw(st.sampled_from(["none", "mlp"]))
    cfg = StackConfig(
        token_size=draw(st.integers(1, 3)),
        attention=tuple(draw(st.sampled_from(ATTENTION_KINDS)) for _ in range(n_layers)),
        n_heads=draw(st.integers(1, 2)),
        positional_size=0 if embedding == "mlp" else draw(st.sampled_from([0, 2, 4])),
        embedding=embedding,
        d_embed=draw(st.integers(2, 4)),
        d_embed_hidden=draw(st.integers(2, 5)),
        layer_norm=draw(st.booleans()),
        mlp=draw(st.booleans()),
        query_attended=draw(st.booleans()),
        dtype=dtype,
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = {name: (value + 0.1 * rng.standard_normal(value.shape)).astype(dtype)
              for name, value in init_params(cfg, rng, scale=0.5).items()}
    batch, n_tokens = draw(st.integers(1, 3)), draw(st.integers(min_tokens(cfg), 4))
    tokens = rng.standard_normal((batch, n_tokens, cfg.token_size)).astype(dtype)
    return cfg, params, tokens, rng.standard_normal(batch).astype(dtype)


def cases(dtype: str):
    """float32 at two layers at most (the oracle's own float32 error grows fast with depth)."""
    return stack_cases(dtype=dtype) if dtype == "float64" else stack_cases(dtype=dtype, max_layers=2)


def flat(outputs) -> dict:
    """name -> array of a function's outputs: a list of arrays, an array or number, or (loss, grads)."""
    if isinstance(outputs, tuple):
        loss, grads = outputs
        return {"loss": np.asarray(loss), **{f"grad[{name!r}]": np.asarray(g) for name, g in grads.items()}}
    if isinstance(outputs, list):
        return {f"[{i}]": np.asarray(array) for i, array in enumerate(outputs)}
    return {"value": np.asarray(outputs)}


def assert_matches_the_oracle(function: str, cfg, params, *arrays):
    """``jax_stack.<function>`` equals ``numpy_stack.<function>`` on the same inputs, in cfg.dtype:
    to 1e-9 of each tensor's largest entry in float64; in float32 to 1e-4, or else to twice the
    float32 oracle's own distance from the exact answer (the float64 oracle on the same inputs)."""
    got = flat(getattr(jax_stack, function)(cfg, params, *arrays))
    expected = flat(getattr(oracle, function)(cfg, params, *arrays))
    assert got.keys() == expected.keys()
    for name, array in got.items():
        assert array.dtype == np.dtype(cfg.dtype), f"{function} {name}: dtype {array.dtype}, expected {cfg.dtype}"
    named = {f"{function} {name}": name for name in expected}
    if cfg.dtype == "float64":
        check_all({label: (got[name], expected[name]) for label, name in named.items()}, RTOL["float64"], ATOL_SCALE["float64"])
        return
    params64 = {name: value.astype(np.float64) for name, value in params.items()}
    exact = flat(getattr(oracle, function)(replace(cfg, dtype="float64"), params64, *(
        a if isinstance(a, int) else np.asarray(a, np.float64) for a in arrays)))
    own_error = {name: float(np.max(np.abs(expected[name].astype(np.float64) - exact[name]), initial=0.0)) for name in expected}
    check_all({label: (got[name], expected[name], 2.0 * own_error[name]) for label, name in named.items()},
              RTOL["float32"], ATOL_SCALE["float32"])


# --- every function against the oracle ----------------------------------------------------------------------


@EXAMPLES
@given(case=stack_cases())
def test_every_stream_matches_the_oracle(case):
    cfg, params, tokens, _ = case
    states = jax_stack.forward(cfg, params, tokens)
    assert [s.shape for s in states] == [(*tokens.shape[:2], cfg.width)] * (cfg.n_layers + 1)
    assert_matches_the_oracle("forward", cfg, params, tokens)


@EXAMPLES
@given(case=stack_cases())
def test_attention_maps_match_the_oracle(case):
    cfg, params, tokens, _ = case
    n_keys = tokens.shape[1] if cfg.query_attended else tokens.shape[1] - 1
    maps = jax_stack.attention_maps(cfg, params, tokens)
    assert [m.shape for m in maps] == [(tokens.shape[0], cfg.n_heads, tokens.shape[1], n_keys)] * cfg.n_layers
    assert_matches_the_oracle("attention_maps", cfg, params, tokens)


@EXAMPLES
@given(case=stack_cases())
def test_predictions_match_the_oracle(case):
    cfg, params, tokens, _ = case
    assert jax_stack.predict(cfg, params, tokens).shape == (tokens.shape[0],)
    assert_matches_the_oracle("predict", cfg, params, tokens)


@EXAMPLES
@given(case=stack_cases())
def test_the_loss_matches_the_oracle(case):
    cfg, params, tokens, targets = case
    assert jax_stack.loss(cfg, params, tokens, targets).shape == ()
    assert_matches_the_oracle("loss", cfg, params, tokens, targets)


@GRADIENT_EXAMPLES
@given(case=stack_cases())
def test_the_loss_gradient_matches_the_oracle(case):
    cfg, params, tokens, targets = case
    _, grads = jax_stack.loss_and_grad(cfg, params, tokens, targets)
    assert {name: g.shape for name, g in grads.items()} == param_shapes(cfg)
    assert_matches_the_oracle("loss_and_grad", cfg, params, tokens, targets)


@GRADIENT_EXAMPLES
@given(case=stack_cases(), data=st.data())
def test_the_stream_gradient_matches_the_oracle_at_every_layer(case, data):
    cfg, params, tokens, _ = case
    layer = data.draw(st.integers(0, cfg.n_layers), label="layer")
    upstream = np.random.default_rng(layer).standard_normal((*tokens.shape[:2], cfg.width))
    assert jax_stack.stream_vjp(cfg, params, tokens, layer, upstream).shape == tokens.shape
    assert_matches_the_oracle("stream_vjp", cfg, params, tokens, layer, upstream)


@GRADIENT_EXAMPLES
@given(case=stack_cases())
def test_the_prediction_input_gradient_matches_the_oracle(case):
    cfg, params, tokens, _ = case
    assert jax_stack.prediction_input_grad(cfg, params, tokens).shape == tokens.shape
    assert_matches_the_oracle("prediction_input_grad", cfg, params, tokens)


@FLOAT32_EXAMPLES
@given(case=stack_cases(dtype="float32", max_layers=2), data=st.data())
def test_in_float32_every_function_matches_the_oracle_to_float32_accuracy(case, data):
    cfg, params, tokens, targets = case
    layer = data.draw(st.integers(0, cfg.n_layers), label="layer")
    upstream = np.random.default_rng(layer).standard_normal((*tokens.shape[:2], cfg.width)).astype(np.float32)
    for function in ("forward", "attention_maps", "predict", "prediction_input_grad"):
        assert_matches_the_oracle(function, cfg, params, tokens)
    for function in ("loss", "loss_and_grad"):
        assert_matches_the_oracle(function, cfg, params, tokens, targets)
    assert_matches_the_oracle("stream_vjp", cfg, params, tokens, layer, upstream)


# --- fixed examples -------------------------------------------------------------------------------------------

#: every feature at once: two layers of both kinds, two heads, positional encoding, LN and MLPs
FULL = StackConfig(token_size=2, attention=("softmax", "linear"), n_heads=2, positional_size=2, layer_norm=True, mlp=True)


def full_case(seed: int = 0, batch: int = 3, n_tokens: int = 4):
    rng = np.random.default_rng(seed)
    params = {name: value + 0.1 * rng.standard_normal(value.shape) for name, value in init_params(FULL, rng, 0.5).items()}
    return params, rng.standard_normal((batch, n_tokens, 2)), rng.standard_normal(batch)


def test_the_full_config_matches_the_oracle():
    """Every piece at once: embedding, LayerNorm, MLP blocks, both attention kinds, two heads."""
    params, tokens, targets = full_case(seed=1, batch=2, n_tokens=5)
    assert_matches_the_oracle("loss_and_grad", FULL, params, tokens, targets)


def test_the_functions_compose_with_jax_transformations():
    """Inside a caller's jit and grad (traced inputs), loss gives the oracle's gradient."""
    params, tokens, targets = full_case(seed=2)
    grads = jax.jit(jax.grad(lambda p: jax_stack.loss(FULL, p, tokens, targets)))(params)
    expected = oracle.loss_and_grad(FULL, params, tokens, targets)[1]
    check_all({f"grad[{name!r}]": (grads[name], expected[name]) for name in expected}, RTOL["float64"], ATOL_SCALE["float64"])


def test_bad_inputs_are_refused_with_a_value_error():
    params, tokens, targets = full_case()
    with pytest.raises(ValueError, match="layer"):
        jax_stack.stream_vjp(FULL, params, tokens, FULL.n_layers + 1, np.zeros((*tokens.shape[:2], FULL.width)))
    with pytest.raises(ValueError, match="upstream"):
        jax_stack.stream_vjp(FULL, params, tokens, 1, np.zeros((*tokens.shape[:2], FULL.width + 1)))
    with pytest.raises(ValueError, match="missing"):
        jax_stack.predict(FULL, {k: v for k, v in params.items() if k != "layer0.w_q"}, tokens)
    with pytest.raises(ValueError, match="tokens"):
        jax_stack.loss(FULL, params, tokens[..., :1], targets)
    with pytest.raises(ValueError, match="trainable"):
        jax_stack.make_train_step(FULL, lr=0.1, trainable=["layer9.w_q"])
    with pytest.raises(ValueError, match="b2"):
        jax_stack.make_train_step(FULL, lr=0.1, b2=1.0)


# --- the train step ---------------------------------------------------------------------------------------


def numpy_steps(cfg, params, batches, *, lr, b1, b2, eps, clip_norm, trainable):
    """The reference: per batch, the oracle's gradient (0 outside ``trainable``), then
    iclgd.optim's chain(clip_by_global_norm, scale_by_adam, scale_by_learning_rate) (update 0
    outside ``trainable``).  Returns (params, AdamState, losses)."""
    transform = chain(clip_by_global_norm(clip_norm), scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))
    state, losses = adam_chain_state(AdamState.zeros_like(params)), []

    def masked(tree):
        return {name: value if name in trainable else np.zeros_like(value) for name, value in tree.items()}

    for tokens, targets in batches:
        loss, grads = oracle.loss_and_grad(cfg, params, tokens, targets)
        updates, state = transform.update(masked(grads), state, params)
        params = {name: params[name] + masked(updates)[name] for name in params}
        losses.append(loss)
    return params, adam_state_of(state), losses


def jax_steps(cfg, params, batches, **settings):
    init, step = jax_stack.make_train_step(cfg, **settings)
    opt_state, losses = init(params), []
    for tokens, targets in batches:
        params, opt_state, loss = step(params, opt_state, tokens, targets)
        losses.append(float(loss))
    return {name: np.asarray(value) for name, value in params.items()}, jax_stack.adam_state_of(opt_state), losses


def compare_steps(cfg, params, batches, **settings):
    got_params, got_adam, got_losses = jax_steps(cfg, params, batches, **settings)
    settings = dict(settings)
    names = settings.pop("trainable") or set(params)
    want_params, want_adam, want_losses = numpy_steps(cfg, params, batches, trainable=set(names), **settings)
    assert got_adam.count == want_adam.count == len(batches)
    results = {"losses": (np.array(got_losses), np.array(want_losses))}
    for label, got, want in (("params", got_params, want_params), ("adam m", got_adam.m, want_adam.m), ("adam v", got_adam.v, want_adam.v)):
        results |= {f"{label}[{name!r}]": (got[name], want[name]) for name in want}
    check_all(results, 1e-9, ATOL_SCALE["float64"])
    return got_params, got_adam


def test_the_train_step_is_clipping_adam_and_minus_lr_on_the_oracle_gradient():
    params, tokens, targets = full_case(seed=3)
    first = (tokens, targets)
    second = tuple(array[::-1].copy() for array in first)
    norm = float(np.sqrt(sum(np.sum(g * g) for g in oracle.loss_and_grad(FULL, params, tokens, targets)[1].values())))
    # clip_norm below the first gradient's norm: the first step is clipped
    compare_steps(FULL, params, [first, second], lr=0.05, b1=0.9, b2=0.98, eps=1e-8, clip_norm=0.5 * norm, trainable=None)


#: the settings of the two tests below (one compiled step serves both)
FROZEN_SETTINGS = dict(lr=0.05, b1=0.9, b2=0.98, eps=1e-8, clip_norm=1.0,
                       trainable=frozenset({"layer0.w_q", "layer1.w_o", "layer1.mlp.b_out", "layer0.ln.weight"}))


def test_parameters_outside_trainable_do_not_move_and_keep_zero_moments():
    params, tokens, targets = full_case(seed=4)
    trainable = FROZEN_SETTINGS["trainable"]
    batches = [(tokens, targets), (tokens[::-1].copy(), targets[::-1].copy())]
    new, adam = compare_steps(FULL, params, batches, **FROZEN_SETTINGS)
    for name in params:
        if name in trainable:
            assert not np.array_equal(new[name], params[name]), f"{name} is trainable but did not move"
        else:
            assert np.array_equal(new[name], params[name]), f"{name} is frozen but moved"
            assert not adam.m[name].any() and not adam.v[name].any(), f"{name} is frozen but has Adam moments"


def test_the_optimiser_state_round_trips_through_adam_state():
    params, tokens, targets = full_case(seed=5)
    init, step = jax_stack.make_train_step(FULL, **FROZEN_SETTINGS)
    _, opt_state, _ = step(params, init(params), tokens, targets)
    adam = jax_stack.adam_state_of(opt_state)
    back = jax_stack.adam_state_of(jax_stack.with_adam_state(init(params), adam))
    assert back.count == adam.count == 1 and any(adam.m[name].any() for name in params)
    for name in params:
        assert np.array_equal(back.m[name], adam.m[name]) and np.array_equal(back.v[name], adam.v[name])
