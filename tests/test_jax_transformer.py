"""The jax engine of the developmental-landscape transformer (iclgd.backends.jax_transformer) is held
to the hand-written NumPy oracle (iclgd.backends.numpy_transformer): on drawn configs, parameters
and batches, every forward stage, the predictions, the per-position loss, the loss and every
gradient agree to 1e-9 relative in float64 and 1e-4 in float32 (each tensor judged on the scale of
its own largest entry, tests/parity.py; in float32, a tensor whose own round-off is larger - a sum
that cancels, such as a bias gradient at large loss - may differ from the float32 oracle by twice
the oracle's distance to the exact answer); and its trainer, one lax.scan per call, takes the same 50
steps as the host loop (HostTrainer) driven by the oracle, to 1e-8 relative in float64."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("jax", reason="the jax engine needs jax and optax: pip install 'iclgd[jax]'")
pytest.importorskip("optax", reason="the jax engine needs jax and optax: pip install 'iclgd[jax]'")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from parity import check_all  # noqa: E402
from strategies import random_interleaved, random_transformer_params, transformer_cases  # noqa: E402

from iclgd.backends.base import sample_loss_and_grad  # noqa: E402
from iclgd.backends.jax_transformer import JaxTransformerEngine, JaxTransformerTrainer, scan_lengths  # noqa: E402
from iclgd.backends.numpy_transformer import TransformerOracle  # noqa: E402
from iclgd.backends.training import HostTrainer, TrainState  # noqa: E402
from iclgd.models.transformer import TransformerConfig, check_targets, check_tokens, init_params  # noqa: E402
from iclgd.optim import AdamConfig, AdamState  # noqa: E402
from iclgd.tasks.noisy import NoisyRegressionTask  # noqa: E402

oracle, engine = TransformerOracle(), JaxTransformerEngine()
RTOL = {"float64": 1e-9, "float32": 1e-4}
DTYPES = pytest.mark.parametrize("dtype", ["float64", "float32"])
EXAMPLES = settings(max_examples=6)


def cases(dtype):
    """Drawn (cfg, params, tokens, targets); float32 at two layers at most (three layers of these
    weights can overflow float32 in every engine)."""
    return transformer_cases(dtype=dtype) if dtype == "float64" else transformer_cases(dtype=dtype, max_layers=2)


def checked(case):
    """A drawn case with its tokens and targets cast to the config's dtype (what the hooks receive)."""
    cfg, params, tokens, targets = case
    tokens = check_tokens(cfg, tokens)
    return cfg, params, tokens, check_targets(cfg, targets, tokens.shape[0])


def pairs(prefix: str, got: dict, expected: dict) -> dict:
    """prefix[name] -> (got[name], expected[name]) for every name (the same names in both)."""
    assert got.keys() == expected.keys()
    return {f"{prefix}[{name!r}]": (got[name], expected[name]) for name in expected}


def flat(outputs) -> dict:
    """name -> array of a hook's outputs: a list of states, an array, a number, or (loss, grads)."""
    if isinstance(outputs, tuple):
        loss, grads = outputs
        return {"loss": np.asarray(loss), **{f"grad[{name!r}]": g for name, g in grads.items()}}
    if isinstance(outputs, list):
        return {f"state {i}": state for i, state in enumerate(outputs)}
    return {"value": np.asarray(outputs)}


def assert_matches_the_oracle(hook: str, cfg, params, *arrays):
    """``engine.<hook>`` equals ``oracle.<hook>`` on the same inputs: to 1e-9 of each tensor's
    largest entry in float64; in float32 to 1e-4, or else to twice the float32 oracle's own
    distance from the exact answer (the float64 oracle on the same float32-rounded inputs)."""
    got, expected = flat(getattr(engine, hook)(cfg, params, *arrays)), flat(getattr(oracle, hook)(cfg, params, *arrays))
    assert got.keys() == expected.keys()
    if cfg.dtype == "float64":
        check_all({name: (got[name], expected[name]) for name in expected}, RTOL["float64"])
        return
    cfg64 = replace(cfg, dtype="float64")
    params64 = {name: value.astype(np.float64) for name, value in params.items()}
    with np.errstate(all="ignore"):
        exact = flat(getattr(oracle, hook)(cfg64, params64, *(np.asarray(a, np.float64) for a in arrays)))
    own_error = {name: float(np.max(np.abs(expected[name].astype(np.float64) - exact[name]), initial=0.0)) for name in expected}
    check_all({name: (got[name], expected[name], 2.0 * own_error[name]) for name in expected}, RTOL["float32"])


# --- the engine against the oracle --------------------------------------------------------------------


@DTYPES
@EXAMPLES
@given(data=st.data())
def test_every_forward_stage_matches_the_oracle(dtype, data):
    cfg, params, tokens, _ = checked(data.draw(cases(dtype)))
    states = engine._forward(cfg, params, tokens)
    assert len(states) == cfg.n_layers + 2 and all(state.dtype == np.dtype(dtype) for state in states)
    assert_matches_the_oracle("_forward", cfg, params, tokens)


@DTYPES
@EXAMPLES
@given(data=st.data())
def test_predictions_match_the_oracle(dtype, data):
    cfg, params, tokens, _ = checked(data.draw(cases(dtype)))
    yhat = engine._predict(cfg, params, tokens)
    assert yhat.shape == (tokens.shape[0], cfg.n_examples) and yhat.dtype == np.dtype(dtype)
    assert_matches_the_oracle("_predict", cfg, params, tokens)


@DTYPES
@EXAMPLES
@given(data=st.data())
def test_per_position_loss_matches_the_oracle(dtype, data):
    cfg, params, tokens, targets = checked(data.draw(cases(dtype)))
    assert engine._per_position_loss(cfg, params, tokens, targets).shape == (cfg.n_examples,)
    assert_matches_the_oracle("_per_position_loss", cfg, params, tokens, targets)


@DTYPES
@EXAMPLES
@given(data=st.data())
def test_the_loss_matches_the_oracle(dtype, data):
    cfg, params, tokens, targets = checked(data.draw(cases(dtype)))
    assert isinstance(engine._loss(cfg, params, tokens, targets), float)
    assert_matches_the_oracle("_loss", cfg, params, tokens, targets)


@DTYPES
@EXAMPLES
@given(data=st.data())
def test_the_loss_and_every_gradient_match_the_oracle(dtype, data):
    cfg, params, tokens, targets = checked(data.draw(cases(dtype)))
    _, grads = engine._loss_and_grad(cfg, params, tokens, targets)
    assert all(g.dtype == np.dtype(dtype) for g in grads.values())
    assert_matches_the_oracle("_loss_and_grad", cfg, params, tokens, targets)


@DTYPES
@EXAMPLES
@given(data=st.data())
def test_the_weighted_loss_and_its_gradient_match_the_oracle(dtype, data):
    cfg, params, tokens, targets = checked(data.draw(cases(dtype)))
    weights = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).uniform(0.0, 2.0, cfg.n_examples)
    assert_matches_the_oracle("_loss_and_grad_weighted", cfg, params, tokens, targets, weights)


@pytest.mark.parametrize("n_chunks", [2, 3])
def test_the_loss_cut_into_independent_batch_parts_matches_the_oracle(n_chunks):
    from iclgd.backends.jax_transformer import _loss_and_grad_jit

    cfg = TransformerConfig(d=3, n_examples=5, n_layers=2, n_heads=2, d_model=8, d_mlp=6)
    params = random_transformer_params(cfg, 1, 0.5)
    tokens, targets = random_interleaved(cfg, 7, 2)  # 7 sequences: parts of unequal sizes
    loss, grads = _loss_and_grad_jit(cfg, params, tokens, targets, n_chunks)
    expected_loss, expected_grads = oracle._loss_and_grad(cfg, params, tokens, targets)
    check_all({"loss": (float(loss), expected_loss), **pairs("grad", {k: np.asarray(v) for k, v in grads.items()}, expected_grads)}, 1e-9)


def test_the_sensitivity_is_an_lsa_api():
    cfg = TransformerConfig(d=2, n_examples=3, n_layers=1, n_heads=1, d_model=4, d_mlp=4)
    tokens, _ = random_interleaved(cfg, 2, 0)
    with pytest.raises(ValueError, match="LSA"):
        engine._sensitivity(cfg, init_params(cfg, 0), tokens)


# --- training -----------------------------------------------------------------------------------------


class OracleOnHost:
    """What HostTrainer needs of a backend: the oracle's loss and gradient on a freshly sampled batch."""

    name = "numpy"

    def sample_loss_and_grad(self, cfg, task, params, batch_size, rng):
        return sample_loss_and_grad(oracle, cfg, task, params, batch_size, rng)


def run_config(dtype="float64", lr=3e-3, **adam):
    cfg = TransformerConfig(d=3, n_examples=4, n_layers=2, n_heads=2, d_model=8, d_mlp=12, dtype=dtype)
    task = NoisyRegressionTask(d=3, n_examples=4, noise_variance=0.125, dtype=dtype)
    settings_ = {"clip_norm": 1.0, "schedule": "warmup_cosine", "warmup_steps": 5, "total_steps": 50} | adam
    train = SimpleNamespace(seed=3, batch_size=16, adam=lambda: AdamConfig(lr=lr, **settings_))
    return SimpleNamespace(model=cfg, task=task, train=train)


def fresh_state(config, seed=0) -> TrainState:
    params = init_params(config.model, seed)
    return TrainState(0, params, AdamState.zeros_like(params))


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def assert_same_run(got, expected, rtol):
    (state, records), (expected_state, expected_records) = got, expected
    assert state.step == expected_state.step and state.adam.count == expected_state.adam.count
    assert [r.step for r in records] == [r.step for r in expected_records]
    assert [r.finite for r in records] == [r.finite for r in expected_records]
    finite = [i for i, r in enumerate(expected_records) if r.finite]
    for field in ("loss", "lr", "grad_norm"):
        assert relative([getattr(records[i], field) for i in finite], [getattr(expected_records[i], field) for i in finite]) <= rtol, field
    check_all({
        **pairs("params", state.params, expected_state.params),
        **pairs("adam.m", state.adam.m, expected_state.adam.m),
        **pairs("adam.v", state.adam.v, expected_state.adam.v),
    }, rtol)


def test_fifty_training_steps_match_the_host_loop_on_the_oracle():
    config = run_config()
    expected = HostTrainer(OracleOnHost(), config).advance(fresh_state(config), 50)
    got = JaxTransformerTrainer(config).advance(fresh_state(config), 50)
    assert len(got[1]) == 50 and got[0].step == 50
    assert_same_run(got, expected, 1e-8)


def test_a_run_cut_into_calls_and_scans_equals_one_call():
    config = run_config()
    whole = JaxTransformerTrainer(config).advance(fresh_state(config), 20)
    trainer = JaxTransformerTrainer(config)
    trainer.max_scan_steps = 6  # scans of powers of two up to 4: 8 steps = 4 + 4; 12 = 4 + 4 + 4
    state, first = trainer.advance(fresh_state(config), 8)
    state, second = trainer.advance(state, 12)
    assert [r.step for r in first + second] == list(range(20))
    assert_same_run((state, first + second), whole, 1e-12)


@given(st.integers(0, 5000), st.integers(1, 2000))
def test_scans_are_powers_of_two_that_add_up_to_the_call(n_steps, longest):
    lengths = scan_lengths(n_steps, longest)
    assert sum(lengths) == n_steps
    assert all(length & (length - 1) == 0 and length <= longest for length in lengths)
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.slow  # ~30 s of jax compilation; the default suite keeps the fifty-step parity with the host loop
def test_training_stops_at_the_first_non_finite_update_as_the_host_loop_does():
    # a rate of 1e306 sends the params to ~1e306 in one update; the next loss overflows
    config = run_config(lr=1e306, clip_norm=None, schedule="constant")
    with np.errstate(all="ignore"):
        expected = HostTrainer(OracleOnHost(), config).advance(fresh_state(config), 10)
    got = JaxTransformerTrainer(config).advance(fresh_state(config), 10)
    assert not expected[1][-1].finite and len(expected[1]) < 10  # the premise
    assert_same_run(got, expected, 1e-8)


def test_zero_steps_leave_the_state_alone():
    config = run_config()
    state = fresh_state(config)
    assert JaxTransformerTrainer(config).advance(state, 0) == (state, [])


@pytest.mark.slow  # ~30 s of jax compilation; the default suite keeps the fifty-step parity with the host loop
def test_float32_training_stays_in_float32_and_near_the_float64_run():
    config64, config32 = run_config(), run_config("float32")
    state64, _ = JaxTransformerTrainer(config64).advance(fresh_state(config64), 20)
    state32, records = JaxTransformerTrainer(config32).advance(fresh_state(config32), 20)
    assert len(records) == 20 and all(p.dtype == np.float32 for p in state32.params.values())
    assert all(m.dtype == np.float32 for m in state32.adam.m.values())
    assert max(relative(state32.params[k], state64.params[k]) for k in state64.params) < 1e-3


def test_a_host_state_of_another_dtype_is_cast_to_the_configs():
    config = run_config("float32")
    params64 = {k: v.astype(np.float64) for k, v in fresh_state(config).params.items()}
    state64 = TrainState(0, params64, AdamState.zeros_like(params64))
    new_state, _ = JaxTransformerTrainer(config).advance(state64, 20)  # the compiled scan of the test above
    assert all(p.dtype == np.float32 for p in new_state.params.values())
