"""Bad input fails at the boundary of the library, with a message that names the problem.

DESIGN.md: wrong shapes, non-finite values, impossible configs and an unknown backend raise
``ValueError``; an uninstalled optional engine raises ``ImportError`` with the pip extra to install.
Each message says what was expected and what was given, so every test below checks that the
message names the offending argument (and, where natural, repeats the value given).
"""
from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import iclgd
import iclgd.backends
from iclgd import LinearRegressionTask, LSAConfig
from iclgd.baselines import gd_predict, gd_weights, optimal_eta, optimal_loss, ridge_predict, ridge_weights

FAST = settings(max_examples=20, deadline=None)

NOT_POSITIVE_INTEGERS = [0, -1, 2.5, True]
UNKNOWN_DTYPES = ["float16", "int32", "complex128", "bool"]
METHODS = ["predict", "loss", "loss_and_grad", "sensitivity"]

D, N, B = 3, 4, 2


def given_value(value) -> str:
    """How the value appears in the message: its repr (ints print the same either way)."""
    return re.escape(repr(value))


def call(method: str, cfg: LSAConfig, params, tokens, targets=None):
    """Call a numpy-backend method; loss methods get a hand-built Batch."""
    backend = iclgd.get_backend("numpy")
    if method in ("loss", "loss_and_grad"):
        tokens = np.asarray(tokens)
        if targets is None:
            targets = np.zeros(tokens.shape[0] if tokens.ndim else 1)
        batch = iclgd.Batch(tokens, np.asarray(targets), np.zeros((len(targets), D)))
        return getattr(backend, method)(cfg, params, batch)
    return getattr(backend, method)(cfg, params, tokens)


def good_tokens(batch_size: int = B, n_context: int = N, d: int = D) -> np.ndarray:
    return LinearRegressionTask(d=d, n_context=n_context).sample(batch_size, seed=0).tokens


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", NOT_POSITIVE_INTEGERS, ids=repr)
@pytest.mark.parametrize("name", ["d", "n_layers", "n_heads", "key_size", "value_size", "n_context"])
def test_lsa_config_rejects_a_size_that_is_not_a_positive_integer(name, value):
    kwargs = {"d": 3, name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer.*got {given_value(value)}"):
        LSAConfig(**kwargs)


@pytest.mark.parametrize("value", NOT_POSITIVE_INTEGERS, ids=repr)
@pytest.mark.parametrize("name", ["d", "n_context"])
def test_task_rejects_a_size_that_is_not_a_positive_integer(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer.*got {given_value(value)}"):
        LinearRegressionTask(**{name: value})


@pytest.mark.parametrize("value", NOT_POSITIVE_INTEGERS, ids=repr)
def test_sample_rejects_a_batch_size_that_is_not_a_positive_integer(value):
    with pytest.raises(ValueError, match=rf"^batch_size must be a positive integer.*got {given_value(value)}"):
        LinearRegressionTask(d=2, n_context=2).sample(batch_size=value, seed=0)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"], ids=repr)
def test_sample_rejects_a_seed_that_is_neither_a_non_negative_int_nor_a_generator(seed):
    with pytest.raises(ValueError, match=rf"^seed must be a non-negative integer.*got {given_value(seed)}"):
        LinearRegressionTask(d=2, n_context=2).sample(batch_size=2, seed=seed)


@pytest.mark.parametrize("flag", ["tied", "include_query"])
@pytest.mark.parametrize("value", [1, "yes", None], ids=repr)
def test_lsa_config_rejects_a_flag_that_is_not_a_bool(flag, value):
    with pytest.raises(ValueError, match=rf"^{flag} must be True or False; got {given_value(value)}"):
        LSAConfig(d=3, **{flag: value})


# --- task parameters --------------------------------------------------------------------------


@FAST
@given(name=st.sampled_from(["noise_std", "w_scale"]), value=st.floats(max_value=-1e-300, min_value=-1e300))
def test_task_rejects_a_negative_noise_std_or_w_scale(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be >= 0; got {given_value(value)}"):
        LinearRegressionTask(**{name: value})


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=repr)
@pytest.mark.parametrize("name", ["noise_std", "w_scale", "x_scale"])
def test_task_rejects_a_non_finite_scale(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be finite; got {value}"):
        LinearRegressionTask(**{name: value})


@FAST
@given(value=st.floats(max_value=0.0, min_value=-1e300))
def test_task_rejects_an_x_scale_that_is_not_positive(value):
    with pytest.raises(ValueError, match=rf"^x_scale must be > 0; got {given_value(value)}"):
        LinearRegressionTask(x_scale=value)


@pytest.mark.parametrize("name", ["Paper", "authors", "", "1.0"])
def test_task_rejects_an_unknown_x_scale_name_and_lists_the_known_ones(name):
    with pytest.raises(ValueError, match=r"^x_scale must be") as error:
        LinearRegressionTask(x_scale=name)
    message = str(error.value)
    assert repr(name) in message
    assert "'paper'" in message and "'authors_code'" in message


@pytest.mark.parametrize("name", ["normal", "Gaussian", "", 2, None])
def test_task_rejects_an_unknown_x_distribution_and_lists_the_known_ones(name):
    with pytest.raises(ValueError, match=rf"^x_distribution must be one of .*; got {given_value(name)}$") as error:
        LinearRegressionTask(x_distribution=name)
    assert all(repr(known) in str(error.value) for known in ("uniform", "gaussian", "exponential", "laplace"))


@FAST
@given(data=st.data(), n_context=st.integers(min_value=1, max_value=20))
def test_task_rejects_more_distractors_than_context_tokens(data, n_context):
    n_distractors = data.draw(st.integers(min_value=n_context + 1, max_value=n_context + 20))
    with pytest.raises(ValueError, match=rf"^n_distractors must be <= n_context = {n_context}; got {n_distractors}$"):
        LinearRegressionTask(n_context=n_context, n_distractors=n_distractors)


@pytest.mark.parametrize("value", [-1, 1.5, True], ids=repr)
def test_task_rejects_n_distractors_that_is_not_a_non_negative_integer(value):
    with pytest.raises(ValueError, match=rf"^n_distractors must be a non-negative integer.*got {given_value(value)}"):
        LinearRegressionTask(n_distractors=value)


@pytest.mark.parametrize("dtype", UNKNOWN_DTYPES)
@pytest.mark.parametrize("make", [LinearRegressionTask, lambda dtype: LSAConfig(d=3, dtype=dtype)], ids=["task", "lsa_config"])
def test_an_unknown_dtype_is_rejected_naming_the_allowed_ones(make, dtype):
    with pytest.raises(ValueError, match=rf"^dtype must be one of .*float32.*float64.*got {given_value(dtype)}"):
        make(dtype=dtype)


@pytest.mark.parametrize("make", [LinearRegressionTask, lambda dtype: LSAConfig(d=3, dtype=dtype)], ids=["task", "lsa_config"])
def test_dtype_none_is_rejected(make):
    with pytest.raises(ValueError, match=r"^dtype must be one of"):
        make(dtype=None)


# --- tokens -----------------------------------------------------------------------------------

BAD_TOKEN_SHAPES = {
    "wrong_last_axis": (B, N + 1, D + 2),
    "too_short_last_axis": (B, N + 1, D),
    "two_d": (N + 1, D + 1),
    "four_d": (1, B, N + 1, D + 1),
    "no_context_tokens": (B, 1, D + 1),
    "empty_batch": (0, N + 1, D + 1),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", BAD_TOKEN_SHAPES.values(), ids=BAD_TOKEN_SHAPES.keys())
def test_backend_rejects_tokens_of_the_wrong_shape_and_repeats_the_shape(method, shape):
    cfg = LSAConfig(d=D)
    with pytest.raises(ValueError, match=rf"^tokens must .*got shape {re.escape(str(shape))}|^tokens must .*got {re.escape(str(shape))}"):
        call(method, cfg, iclgd.init_params(cfg), np.zeros(shape))


@pytest.mark.parametrize("method", METHODS)
@given(n_tokens=st.integers(min_value=2, max_value=12))
@FAST
def test_backend_rejects_tokens_whose_context_length_differs_from_cfg_n_context(method, n_tokens):
    cfg = LSAConfig(d=D, n_context=N)
    assume(n_tokens != N + 1)  # the one right length
    tokens = good_tokens(n_context=n_tokens - 1)
    with pytest.raises(ValueError, match=rf"^tokens must have shape \(B, {N} \+ 1, d \+ 1 = {D + 1}\); got \({B}, {n_tokens}, {D + 1}\)"):
        call(method, cfg, iclgd.init_params(cfg), tokens)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@given(data=st.data())
@FAST
def test_backend_rejects_non_finite_tokens_and_says_where(method, bad, data):
    cfg = LSAConfig(d=D)
    tokens = good_tokens()
    index = tuple(data.draw(st.integers(0, size - 1)) for size in tokens.shape)
    tokens[index] = bad
    with pytest.raises(ValueError, match=rf"^tokens must hold only finite values; got 1 NaN/inf entries \(first at index {re.escape(str(index))}\)"):
        call(method, cfg, iclgd.init_params(cfg), tokens)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tokens", [np.zeros((B, N + 1, D + 1), dtype=complex), np.full((B, N + 1, D + 1), "x"), np.zeros((B, N + 1, D + 1), dtype=bool)], ids=["complex", "str", "bool"])
def test_backend_rejects_tokens_that_are_not_real_numbers(method, tokens):
    cfg = LSAConfig(d=D)
    with pytest.raises(ValueError, match=rf"^tokens must be a real-valued array; got dtype {tokens.dtype}"):
        call(method, cfg, iclgd.init_params(cfg), tokens)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")

def test_backend_rejects_tokens_that_overflow_the_config_dtype():
    cfg = LSAConfig(d=D, dtype="float32")
    tokens = np.full((B, N + 1, D + 1), 1e300)
    with pytest.raises(ValueError, match=r"^tokens"):
        iclgd.get_backend("numpy").predict(cfg, iclgd.init_params(cfg), tokens)


# --- targets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["loss", "loss_and_grad"])
@pytest.mark.parametrize("n_targets", [0, 1, B + 1, 3 * B])
def test_loss_rejects_targets_of_the_wrong_length(method, n_targets):
    cfg = LSAConfig(d=D)
    with pytest.raises(ValueError, match=rf"^targets must have shape \(B,\) = \({B},\); got \({n_targets},\)"):
        call(method, cfg, iclgd.init_params(cfg), good_tokens(), targets=np.zeros(n_targets))


@pytest.mark.parametrize("method", ["loss", "loss_and_grad"])
def test_loss_rejects_targets_that_are_not_1d(method):
    cfg = LSAConfig(d=D)
    with pytest.raises(ValueError, match=rf"^targets must be a 1-d array; got shape \({B}, 1\)"):
        call(method, cfg, iclgd.init_params(cfg), good_tokens(), targets=np.zeros((B, 1)))


@pytest.mark.parametrize("method", ["loss", "loss_and_grad"])
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@given(position=st.integers(0, B - 1))
@FAST
def test_loss_rejects_non_finite_targets_and_says_where(method, bad, position):
    cfg = LSAConfig(d=D)
    targets = np.zeros(B)
    targets[position] = bad
    with pytest.raises(ValueError, match=rf"^targets must hold only finite values; got 1 NaN/inf entries \(first at index \({position},\)\)"):
        call(method, cfg, iclgd.init_params(cfg), good_tokens(), targets=targets)


# --- params -----------------------------------------------------------------------------------

CONFIGS = {
    "one_layer": LSAConfig(d=D),
    "two_layers_two_heads": LSAConfig(d=D, n_layers=2, n_heads=2, key_size=2, value_size=5),
    "tied": LSAConfig(d=D, n_layers=3, tied=True),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
@given(data=st.data())
@FAST
def test_backend_rejects_params_with_a_missing_name_and_names_it(method, cfg, data):
    params = iclgd.init_params(cfg)
    missing = data.draw(st.sampled_from(sorted(params)))
    del params[missing]
    with pytest.raises(ValueError, match=rf"^params do not match the config.*missing \[{re.escape(repr(missing))}\], unexpected \[\]"):
        call(method, cfg, params, good_tokens())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("extra", ["layer0.w_x", "layer9.w_q", "shared.w_q", "bias"])
def test_backend_rejects_params_with_an_extra_name_and_names_it(method, extra):
    cfg = LSAConfig(d=D)
    params = iclgd.init_params(cfg)
    params[extra] = np.zeros((1, D + 1, D + 1))
    with pytest.raises(ValueError, match=rf"^params do not match the config.*missing \[\], unexpected \[{re.escape(repr(extra))}\]"):
        call(method, cfg, params, good_tokens())


@pytest.mark.parametrize("method", METHODS)
def test_backend_rejects_untied_params_for_a_tied_config(method):
    cfg = LSAConfig(d=D, n_layers=2, tied=True)
    params = iclgd.init_params(LSAConfig(d=D, n_layers=2, tied=False))
    with pytest.raises(ValueError, match=r"^params do not match the config \(n_layers=2, tied=True\): missing \[[^\]]*'shared\.w_q'.*unexpected \[[^\]]*'layer1\.w_q'"):
        call(method, cfg, params, good_tokens())


WRONG_SHAPE_CONFIGS = {
    "wrong_head_count": LSAConfig(d=D, n_heads=2),
    "wrong_key_size": LSAConfig(d=D, key_size=2),
    "wrong_value_size": LSAConfig(d=D, value_size=7),
    "wrong_d": LSAConfig(d=D + 1),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("other", WRONG_SHAPE_CONFIGS.values(), ids=WRONG_SHAPE_CONFIGS.keys())
def test_backend_rejects_params_of_the_wrong_shape_and_repeats_both_shapes(method, other):
    cfg = LSAConfig(d=D)
    params = iclgd.init_params(other)
    name = next(name for name, shape in iclgd.param_shapes(cfg).items() if params[name].shape != shape)
    expected, given_shape = iclgd.param_shapes(cfg)[name], params[name].shape
    with pytest.raises(
        ValueError,
        match=rf"^params\[{re.escape(repr(name))}\] must have shape {re.escape(str(expected))}.*got {re.escape(str(given_shape))}$",
    ):
        call(method, cfg, params, good_tokens())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@given(data=st.data())
@FAST
def test_backend_rejects_a_non_finite_param_and_names_it(method, bad, data):
    cfg = CONFIGS["two_layers_two_heads"]
    params = iclgd.init_params(cfg)
    name = data.draw(st.sampled_from(sorted(params)))
    params[name].flat[data.draw(st.integers(0, params[name].size - 1))] = bad
    with pytest.raises(ValueError, match=rf"^params\[{re.escape(repr(name))}\] must hold only finite values; got 1 NaN/inf"):
        call(method, cfg, params, good_tokens())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("params", [None, [], (np.zeros(3),), np.zeros((4, 4)), "layer0.w_q"], ids=lambda p: type(p).__name__)
def test_backend_rejects_params_that_are_not_a_dict(method, params):
    with pytest.raises(ValueError, match=rf"^params must be a dict name -> array; got {type(params).__name__}$"):
        call(method, LSAConfig(d=D), params, good_tokens())


@pytest.mark.parametrize("method", METHODS)
def test_backend_rejects_a_param_that_is_not_real_valued(method):
    cfg = LSAConfig(d=D)
    params = iclgd.init_params(cfg)
    params["layer0.w_k"] = params["layer0.w_k"].astype(object)
    with pytest.raises(ValueError, match=r"^params\['layer0\.w_k'\] must be a real-valued array; got dtype object"):
        call(method, cfg, params, good_tokens())


# --- backends ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["torch", "NumPy", "", "numpy "])
def test_unknown_backend_name_is_rejected_listing_the_known_names(name):
    with pytest.raises(ValueError, match=rf"^unknown backend {given_value(name)}; expected one of") as error:
        iclgd.get_backend(name)
    for known in iclgd.available_backends():
        assert repr(known) in str(error.value)


def test_a_backend_name_that_is_not_a_string_is_rejected():
    with pytest.raises(ValueError, match=r"backend"):
        iclgd.get_backend(["numpy"])


def test_a_backend_whose_engine_is_not_installed_raises_import_error_naming_the_pip_extra(monkeypatch):
    engine = "iclgd_test_engine_that_does_not_exist"
    monkeypatch.setitem(
        iclgd.backends._REGISTRY, "ghost", ("iclgd.backends.numpy_backend", "NumpyBackend", "ghostextra", (engine,))
    )
    assert "ghost" in iclgd.available_backends()
    with pytest.raises(ImportError, match=rf"backend 'ghost' needs {engine}.*pip install 'iclgd\[ghostextra\]'") as error:
        iclgd.get_backend("ghost")
    assert isinstance(error.value.__cause__, ImportError)


# Every registered backend with an optional engine, plus one synthetic entry whose engine
# (a stdlib module) is really installed, so that the list is never empty and the
# sys.modules mechanism is shown to hide an importable module.
SYNTHETIC = ("iclgd.backends.numpy_backend", "NumpyBackend", "synthetic", ("colorsys",))
ENGINE_CASES = {
    (name, engine): entry for name, entry in iclgd.backends._REGISTRY.items() for engine in entry[3]
}
ENGINE_CASES[("synthetic-stdlib-engine", "colorsys")] = SYNTHETIC


@pytest.mark.parametrize("name, engine", ENGINE_CASES, ids=str)
def test_every_backend_with_an_uninstalled_engine_raises_import_error_naming_its_pip_extra(monkeypatch, name, engine):
    if name not in iclgd.backends._REGISTRY:
        monkeypatch.setitem(iclgd.backends._REGISTRY, name, ENGINE_CASES[(name, engine)])
    _, _, extra, engines = iclgd.backends._REGISTRY[name]
    assert extra, f"backend {name!r} has an engine ({engine}) but no pip extra to name"
    monkeypatch.setitem(sys.modules, engine, None)  # import of the engine now fails
    # the message names the first engine that fails to import (an earlier one may be missing for real)
    first_missing = next(e for e in engines if e == engine or importlib.util.find_spec(e) is None)
    with pytest.raises(ImportError, match=rf"backend {re.escape(repr(name))} needs {re.escape(first_missing)}.*iclgd\[{re.escape(extra)}\]"):
        iclgd.get_backend(name)


def test_backends_without_an_engine_need_no_optional_dependency():
    for name, (_, _, extra, engines) in iclgd.backends._REGISTRY.items():
        if not engines:
            assert extra is None, name
            assert iclgd.get_backend(name).name == name


# --- gd_construction --------------------------------------------------------------------------


def test_gd_construction_needs_n_context_from_cfg_or_argument():
    with pytest.raises(ValueError, match=r"^gd_construction needs the number of context tokens N.*n_context.*got neither"):
        iclgd.gd_construction(LSAConfig(d=D), eta=1.0)


@pytest.mark.parametrize("value", NOT_POSITIVE_INTEGERS, ids=repr)
def test_gd_construction_rejects_an_n_context_argument_that_is_not_a_positive_integer(value):
    with pytest.raises(ValueError, match=rf"^n_context must be a positive integer.*got {given_value(value)}"):
        iclgd.gd_construction(LSAConfig(d=D), eta=1.0, n_context=value)


def test_gd_construction_rejects_an_n_context_argument_that_disagrees_with_cfg():
    with pytest.raises(ValueError, match=rf"^n_context={N + 1} disagrees with cfg.n_context={N}$"):
        iclgd.gd_construction(LSAConfig(d=D, n_context=N), eta=1.0, n_context=N + 1)


@FAST
@given(d=st.integers(2, 8), data=st.data())
def test_gd_construction_rejects_a_key_size_smaller_than_d(d, data):
    key_size = data.draw(st.integers(1, d - 1))
    with pytest.raises(ValueError, match=rf"needs key_size >= d = {d}; got key_size={key_size}$"):
        iclgd.gd_construction(LSAConfig(d=d, key_size=key_size, n_context=5), eta=1.0)


def test_gd_construction_rejects_include_query():
    with pytest.raises(ValueError, match=r"needs include_query=False.*got True$"):
        iclgd.gd_construction(LSAConfig(d=D, include_query=True, n_context=N), eta=1.0)


@pytest.mark.parametrize("eta", [float("nan"), float("inf"), -float("inf")], ids=repr)
def test_gd_construction_rejects_a_non_finite_eta(eta):
    with pytest.raises(ValueError, match=rf"^eta must be finite; got {eta}$"):
        iclgd.gd_construction(LSAConfig(d=D, n_context=N), eta=eta)


@pytest.mark.parametrize("eta", ["1.0", None, True, 1j], ids=repr)
def test_gd_construction_rejects_an_eta_that_is_not_a_real_number(eta):
    with pytest.raises(ValueError, match=rf"^eta must be a real number; got {given_value(eta)}"):
        iclgd.gd_construction(LSAConfig(d=D, n_context=N), eta=eta)


@pytest.mark.parametrize("shape", [(D - 1,), (D + 1,), (1, D), (B, D), ()], ids=str)
def test_gd_construction_rejects_w0_of_the_wrong_shape(shape):
    with pytest.raises(ValueError, match=rf"^w0 must have shape \(d,\) = \({D},\); got {re.escape(str(shape))}$"):
        iclgd.gd_construction(LSAConfig(d=D, n_context=N), eta=1.0, w0=np.ones(shape))


def test_gd_construction_rejects_a_non_finite_w0():
    w0 = np.array([0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match=r"^w0 must hold only finite values; got 1 NaN/inf entries \(first at index \(1,\)\)"):
        iclgd.gd_construction(LSAConfig(d=D, n_context=N), eta=1.0, w0=w0)


def test_with_initial_guess_rejects_tokens_without_context():
    with pytest.raises(ValueError, match=r"^tokens must"):
        iclgd.with_initial_guess(np.zeros((B, 1, D + 1)), np.zeros(D))


# --- baselines --------------------------------------------------------------------------------

BASELINE_BAD_TOKENS = {
    "two_d": (N + 1, D + 1),
    "no_context_tokens": (B, 1, D + 1),
    "no_input_dimension": (B, N + 1, 1),
    "empty_batch": (0, N + 1, D + 1),
}


@pytest.mark.parametrize("shape", BASELINE_BAD_TOKENS.values(), ids=BASELINE_BAD_TOKENS.keys())
def test_gd_predict_rejects_tokens_of_the_wrong_shape_and_repeats_the_shape(shape):
    with pytest.raises(ValueError, match=rf"^tokens must .*got (shape )?{re.escape(str(shape))}$"):
        gd_predict(np.zeros(shape), eta=1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@given(data=st.data())
@FAST
def test_gd_predict_rejects_non_finite_tokens_and_says_where(bad, data):
    tokens = good_tokens()
    index = tuple(data.draw(st.integers(0, size - 1)) for size in tokens.shape)
    tokens[index] = bad
    with pytest.raises(ValueError, match=rf"^tokens must hold only finite values; got 1 NaN/inf entries \(first at index {re.escape(str(index))}\)"):
        gd_predict(tokens, eta=1.0)


@pytest.mark.parametrize("function", [gd_predict, gd_weights])
@given(steps=st.integers(max_value=-1, min_value=-10**6))
@FAST
def test_gd_baselines_reject_negative_steps(function, steps):
    with pytest.raises(ValueError, match=rf"^steps must be a non-negative integer \(>= 0\); got {steps}$"):
        function(good_tokens(), eta=1.0, steps=steps)


@pytest.mark.parametrize("function", [gd_predict, gd_weights])
@pytest.mark.parametrize("steps", [1.0, 2.5, True], ids=repr)
def test_gd_baselines_reject_steps_that_are_not_integers(function, steps):
    with pytest.raises(ValueError, match=rf"^steps must be a non-negative integer.*got {given_value(steps)}"):
        function(good_tokens(), eta=1.0, steps=steps)


@pytest.mark.parametrize("function", [gd_predict, gd_weights])
@pytest.mark.parametrize("eta", [float("nan"), float("inf")], ids=repr)
def test_gd_baselines_reject_a_non_finite_eta(function, eta):
    with pytest.raises(ValueError, match=rf"^eta must be finite; got {eta}$"):
        function(good_tokens(), eta=eta)


@pytest.mark.parametrize("function", [ridge_predict, ridge_weights])
@given(ridge=st.floats(max_value=-1e-300, min_value=-1e300))
@FAST
def test_ridge_baselines_reject_a_negative_ridge(function, ridge):
    with pytest.raises(ValueError, match=rf"^ridge must be >= 0; got {given_value(ridge)}$"):
        function(good_tokens(), ridge=ridge)


@pytest.mark.parametrize("function", [gd_predict, gd_weights])
@pytest.mark.parametrize("shape", [(D - 1,), (D + 1,), (B + 1, D), (B, D + 1), (1, 1, D), ()], ids=str)
def test_gd_baselines_reject_w0_of_the_wrong_shape(function, shape):
    with pytest.raises(ValueError, match=rf"^w0 must have shape \(d,\) = \({D},\) or \(B, d\) = \({B}, {D}\); got {re.escape(str(shape))}$"):
        function(good_tokens(), eta=1.0, w0=np.ones(shape))


def test_gd_baselines_reject_a_non_finite_w0():
    with pytest.raises(ValueError, match=r"^w0 must hold only finite values"):
        gd_predict(good_tokens(), eta=1.0, w0=np.array([0.0, 0.0, np.inf]))


# --- inputs that would silently overflow: refused, naming the argument -----------------------------


@FAST
@given(exponent=st.floats(306.6, 308.2), name=st.sampled_from(["noise_std", "w_scale", "x_scale"]))
def test_task_refuses_a_scale_whose_draws_overflow_float64(exponent, name):
    with pytest.raises(ValueError, match=rf"{name}.* too large for float64"):
        LinearRegressionTask(**{name: 10.0**exponent})


@FAST
@given(w_exponent=st.floats(0.0, 300.0), x_exponent=st.floats(0.0, 300.0))
def test_task_refuses_w_and_x_scales_whose_labels_overflow_and_accepts_those_that_fit(w_exponent, x_exponent):
    w_scale, x_scale = 10.0**w_exponent, 10.0**x_exponent
    labels_bound = 3 * (50 * w_scale) * (50 * x_scale)  # d (50 w_scale)(50 x_scale): no draw exceeds 50
    if labels_bound > np.finfo(np.float64).max:
        with pytest.raises(ValueError, match=r"^w_scale and x_scale are too large for float64: labels"):
            LinearRegressionTask(d=3, n_context=4, w_scale=w_scale, x_scale=x_scale)
    else:
        batch = LinearRegressionTask(d=3, n_context=4, w_scale=w_scale, x_scale=x_scale).sample(64, seed=0)
        assert np.isfinite(batch.tokens).all() and np.isfinite(batch.targets).all()


@FAST
@given(exponent=st.floats(36.9, 300.0), name=st.sampled_from(["w_scale", "x_scale", "noise_std"]))
def test_a_float32_task_refuses_scales_whose_draws_overflow_float32(exponent, name):
    with pytest.raises(ValueError, match=rf"{name}.* too large for float32"):
        LinearRegressionTask(dtype="float32", **{name: 10.0**exponent})


@pytest.mark.parametrize("build", [iclgd.gd_construction, lambda cfg, eta: iclgd.gdpp_construction(cfg, eta=0.1, gamma=eta)],
                         ids=["gd_eta", "gdpp_gamma"])
@FAST
@given(n_context=st.integers(1, 5), data=st.data())
def test_constructions_refuse_a_rate_whose_weight_overflows_the_config_dtype(build, n_context, data):
    rate = data.draw(st.floats(4e38 * n_context, 1e300)) * data.draw(st.sampled_from([1, -1]))
    name = "eta" if build is iclgd.gd_construction else "gamma"
    with pytest.raises(ValueError, match=rf"^{name} = .* is too large for float32: the output weight {name} / N"):
        build(LSAConfig(d=D, value_size=D + 1, n_context=n_context, dtype="float32"), rate)


def test_gd_construction_refuses_a_w0_that_overflows_float32():
    with pytest.raises(ValueError, match=r"^w0 overflows float32"):
        iclgd.gd_construction(LSAConfig(d=D, n_context=N, dtype="float32"), eta=1.0, w0=np.array([1e39, 0.0, 0.0]))


@pytest.mark.parametrize("name", ["scale", "init_scale"])
def test_init_params_refuses_a_scale_whose_draws_overflow_float32(name):
    cfg = LSAConfig(d=D, dtype="float32")
    if name == "scale":
        with pytest.raises(ValueError, match=r"^scale = 1e\+300 is too large for float32"):
            iclgd.init_params(cfg, scale=1e300)
    else:
        from iclgd.config import ConfigError, run_config_from_dict

        with pytest.raises(ConfigError, match=r"\[train\]: init_scale = 1e\+300 is too large for float32"):
            run_config_from_dict({"model": {"dtype": "float32"}, "train": {"init_scale": 1e300}})


@pytest.mark.parametrize("steps", [1, 3])
def test_gd_baselines_refuse_a_rate_at_which_gd_overflows_naming_eta(steps):
    with pytest.raises(ValueError, match=r"^tokens \(largest \|entry\| .*\), eta or steps too large: gd_(weights|predict) overflows float64"):
        gd_predict(good_tokens() * 1e100, eta=1e300, steps=steps)


def test_with_initial_guess_refuses_a_w0_whose_guess_overflows():
    with pytest.raises(ValueError, match=r"^w0 and tokens are too large"):
        iclgd.with_initial_guess(good_tokens() * 1e200, np.full(D, 1e200))


@pytest.mark.parametrize("x_scale", [1e-200, 1e300])
def test_optimal_eta_refuses_an_x_scale_whose_optimum_is_beyond_float64(x_scale):
    function = optimal_eta if x_scale < 1 else optimal_loss
    with pytest.raises(ValueError, match=rf"^x_scale = {given_value(x_scale)}.* is too extreme"):
        function(10, 10, x_scale)


@FAST
@given(exponent=st.floats(-100.0, 100.0))
def test_optimal_eta_scales_as_one_over_x_scale_squared_without_overflow(exponent):
    x_scale = 10.0**exponent
    assert optimal_eta(10, 10, x_scale) * x_scale**2 == pytest.approx(50 / 33, rel=1e-12)


@FAST
@given(exponent=st.floats(100.0, 150.0), ridge=st.floats(0.01, 10.0))
def test_ridge_gives_the_same_prediction_in_any_units(exponent, ridge):
    """Scaling every token by c scales the ridge solution's prediction by c at ridge c^2 lambda
    (no s^2 overflow at large c)."""
    scale = 10.0**exponent
    np.testing.assert_allclose(ridge_predict(good_tokens() * scale, ridge * scale**2) / scale,
                               ridge_predict(good_tokens(), ridge), rtol=1e-9)


# --- ragged lists, huge integers, configs of the wrong type --------------------------------------------

RAGGED = {"ragged_rows": [[1.0, 2.0], [3.0]], "ragged_depth": [[[1.0, 2.0]], [[3.0]], 4.0]}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ragged", RAGGED.values(), ids=RAGGED.keys())
def test_backend_refuses_ragged_tokens_naming_them(method, ragged):
    cfg = LSAConfig(d=D)
    with pytest.raises(ValueError, match=r"^tokens must be a rectangular real-valued array; got a list"):
        call(method, cfg, iclgd.init_params(cfg), ragged) if method not in ("loss", "loss_and_grad") else getattr(
            iclgd.get_backend("numpy"), method)(cfg, iclgd.init_params(cfg), iclgd.Batch(ragged, np.zeros(2), None))


@pytest.mark.parametrize("method", ["loss", "loss_and_grad"])
def test_backend_refuses_ragged_targets_naming_them(method):
    cfg = LSAConfig(d=D)
    batch = iclgd.Batch(good_tokens(), [[0.0], [1.0, 2.0]], None)
    with pytest.raises(ValueError, match=r"^targets must be a rectangular real-valued array"):
        getattr(iclgd.get_backend("numpy"), method)(cfg, iclgd.init_params(cfg), batch)


def test_backend_refuses_a_ragged_param_naming_it():
    cfg = LSAConfig(d=1)
    params = iclgd.init_params(cfg)
    params["layer0.w_v"] = [[[1.0, 2.0], [3.0]]]
    with pytest.raises(ValueError, match=r"^params\['layer0\.w_v'\] must be a rectangular real-valued array"):
        iclgd.get_backend("numpy").predict(cfg, params, good_tokens(d=1))


def test_backend_lists_params_whose_keys_are_not_all_strings():
    cfg = LSAConfig(d=D)
    params = iclgd.init_params(cfg) | {1: np.zeros(1), ("a",): np.zeros(1)}
    with pytest.raises(ValueError, match=r"^params do not match the config.*unexpected \[") as error:
        iclgd.get_backend("numpy").predict(cfg, params, good_tokens())
    assert "1" in str(error.value) and "('a',)" in str(error.value)


@pytest.mark.parametrize("name, function", [("eta", lambda v: gd_predict(good_tokens(), eta=v, steps=2)),
                                            ("w0", lambda v: gd_predict(good_tokens(), eta=1.0, w0=v)),
                                            ("w0", lambda v: iclgd.gd_construction(LSAConfig(d=D, n_context=N), 1.0, w0=v))])
def test_baselines_and_constructions_refuse_ragged_sequences_naming_them(name, function):
    with pytest.raises(ValueError, match=rf"^{name} must be a rectangular real-valued array"):
        function([[0.1], [0.1, 0.2]])


HUGE_INTEGERS = [2**63, 2**64, 2**70, np.uint64(2**63)]


@pytest.mark.parametrize("value", HUGE_INTEGERS, ids=repr)
@pytest.mark.parametrize("name", ["batch_size", "seed"])
def test_sample_refuses_integers_beyond_int64_naming_them(name, value):
    kwargs = {"batch_size": 2, "seed": 0} | {name: value}
    with pytest.raises(ValueError, match=rf"^{name} must be a .* integer <= 2\*\*63 - 1, the largest int64; got {int(value)}$"):
        LinearRegressionTask(d=2, n_context=2).sample(**kwargs)


@pytest.mark.parametrize("value", HUGE_INTEGERS, ids=repr)
@pytest.mark.parametrize("name", ["d", "n_layers", "n_heads", "key_size", "value_size", "n_context"])
def test_lsa_config_refuses_sizes_beyond_int64_naming_them(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer <= "):
        LSAConfig(**{"d": 3, name: value})


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_a_rate_beyond_float64_is_not_finite(value):
    with pytest.raises(ValueError, match=r"^eta must be finite \(within float64\); got"):
        iclgd.gd_construction(LSAConfig(d=D, n_context=N), eta=value)


def test_extended_precision_tokens_beyond_float64_are_refused_naming_them():
    tokens = good_tokens().astype(np.longdouble)
    tokens[0, 0, 0] = np.longdouble("1e400")
    if not np.isfinite(tokens[0, 0, 0]):
        pytest.skip("this platform's long double is float64")
    with pytest.raises(ValueError, match=r"^tokens overflows float64"):
        gd_predict(tokens, eta=1.0)


WRONG_CONFIGS = {"task": LinearRegressionTask(d=D, n_context=N), "none": None, "dict": {"d": D}, "string": "lsa"}


@pytest.mark.parametrize("method", METHODS + ["forward"])
@pytest.mark.parametrize("cfg", WRONG_CONFIGS.values(), ids=WRONG_CONFIGS.keys())
def test_backend_refuses_a_config_of_the_wrong_type_naming_cfg(method, cfg):
    families = r"iclgd.LSAConfig( or iclgd.TransformerConfig)?"
    with pytest.raises(ValueError, match=rf"^cfg must be an {families} for the \w+ backend; got {type(cfg).__name__}$"):
        call(method, cfg, iclgd.init_params(LSAConfig(d=D)), good_tokens())


@pytest.mark.parametrize("function", [iclgd.init_params, iclgd.param_shapes, iclgd.zero_params,
                                      lambda cfg: iclgd.gd_construction(cfg, eta=1.0),
                                      lambda cfg: iclgd.gdpp_construction(cfg, eta=1.0, gamma=0.1)],
                         ids=["init_params", "param_shapes", "zero_params", "gd_construction", "gdpp_construction"])
@pytest.mark.parametrize("cfg", WRONG_CONFIGS.values(), ids=WRONG_CONFIGS.keys())
def test_model_functions_refuse_a_config_of_the_wrong_type_naming_cfg(function, cfg):
    with pytest.raises(ValueError, match=r"^cfg must be an iclgd.LSAConfig"):
        function(cfg)


@pytest.mark.parametrize("field", ["task", "model", "train"])
def test_a_run_config_refuses_parts_of_the_wrong_type_naming_them(field):
    from iclgd.config import RunConfig, TrainConfig

    parts = {"task": LinearRegressionTask(d=D, n_context=N), "model": LSAConfig(d=D, n_context=N), "train": TrainConfig()}
    parts[field] = LSAConfig(d=D) if field != "model" else LinearRegressionTask()
    with pytest.raises(ValueError, match=rf"^{field} must be an iclgd\."):
        RunConfig(**parts)
