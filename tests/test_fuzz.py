"""Every public entry point of DESIGN.md's API, fuzzed with valid and hostile arguments.

Each argument is drawn either from a pool of valid values (consistent with each other) or from
a pool of hostile ones: wrong types, None, bools, zero / negative / huge integers, NaN / inf /
huge floats, strings, ragged lists, wrong shapes, object / bool / complex / string / date arrays,
empty arrays, values that overflow float32 or float64 when cast.  Whatever is drawn, the outcome
is one of two things:

* a ``ValueError`` (``ImportError`` for a missing engine) whose message names an argument that
  was drawn hostile (or, for a config, one of its fields);
* a correct result: finite, of the documented shape and dtype, and equal to an independent
  computation where one is cheap (the NumPy oracle for the other engines, direct loops for the
  baselines, the closed form's own formula);

never another exception (AttributeError, TypeError, OverflowError, ZeroDivisionError,
MemoryError, ...), never a silent NaN or inf, and never a NumPy allocation beyond what the
inputs need: ``tracemalloc``'s peak stays below ``iclgd.limits``' estimate for the call plus
``SLACK`` (the memory limit is set to ``LIMIT`` here, so larger work must be refused).

Finite inputs whose products overflow inside an engine (tokens of 1e200: a layer is cubic in
them) are the one case the backends cannot see before running; the last test states that they
are refused too, and is expected to fail until ``Backend`` checks its engines' outputs
(``iclgd.models.lsa.check_outputs``).
"""
from __future__ import annotations

import re
import tracemalloc
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iclgd
from iclgd import baselines, limits

LIMIT = 64 * 2**20  # the memory limit while fuzzing: anything bigger must be refused
SLACK = 1 * 2**20  # Python objects, hypothesis' bookkeeping, NumPy's small temporaries

INSTALLED = []
for _name in iclgd.available_backends():
    try:
        iclgd.get_backend(_name)
        INSTALLED.append(_name)
    except ImportError:
        pass

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def fuzz(max_examples: int):
    """Hypothesis settings of a fuzz test: ``max_examples`` draws, no deadline."""
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=HEALTH)


@pytest.fixture(autouse=True, scope="module")
def small_memory_limit():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(limits.ENV_VAR, str(LIMIT))
        yield


# --- drawing arguments: valid or hostile, remembering which ----------------------------------------


class Arguments:
    """Draws each argument from its valid or its hostile pool and remembers the hostile ones'
    names (with the names an error may use for them instead: a config's fields).

    Per example a mode is drawn: every argument valid, exactly one hostile (the one at a drawn
    position), or each hostile with even odds, so that correct results, precise refusals and
    mixtures are all common."""

    def __init__(self, data):
        self.data, self.values, self.suspects = data, {}, set()
        self.mode = data.draw(st.sampled_from(["valid", "one", "many"]), label="mode")
        self.target = data.draw(st.integers(0, 8), label="hostile position") if self.mode == "one" else None

    def __call__(self, name: str, valid, hostile, also=()):
        position = len(self.values)
        if self.mode == "many":
            strategy = st.one_of(valid.map(lambda v: (False, v)), hostile.map(lambda v: (True, v)))
        elif self.mode == "one" and position == self.target:
            strategy = hostile.map(lambda v: (True, v))
        else:
            strategy = valid.map(lambda v: (False, v))
        is_hostile, value = self.data.draw(strategy, label=name)
        if is_hostile:
            self.suspects |= {name, *also}
        self.values[name] = value
        return value


def names(message: str, name: str) -> bool:
    """Whether ``message`` mentions ``name`` as a word."""
    return re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", message) is not None


def outcome(args: Arguments, call, check, *, peak: int | None = None):
    """Call; a ValueError/ImportError must name a hostile argument, a result must pass ``check``;
    with ``peak``, NumPy's allocations must stay below it.  Returns the result or None."""
    if peak is not None:
        tracemalloc.start()
    try:
        result = call()
    except (ValueError, ImportError) as error:
        message = str(error)
        assert args.suspects, f"valid arguments refused: {message}\n{args.values!r}"
        assert any(names(message, name) for name in args.suspects), (
            f"the message names none of the hostile arguments {sorted(args.suspects)}: {message}")
        return None
    finally:
        if peak is not None:
            used = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert used <= peak, f"allocated {used} bytes, more than the {peak} the inputs need"
    check(result)
    return result


def finite(value) -> bool:
    return bool(np.all(np.isfinite(np.asarray(value))))


# --- pools ---------------------------------------------------------------------------------------------

NOT_NUMBERS = [None, "1", "", b"1", 1j, [], [1.0], {}, object(), types.SimpleNamespace()]
BAD_COUNTS = st.sampled_from([0, -1, -(2**70), 2**63, 2**64, 2**70, 2.5, 1.0, np.float64(2.0), True, False,
                              np.int64(-5), *NOT_NUMBERS])
HUGE_COUNTS = st.sampled_from([10**5, 10**6, 10**9, 2**40, 2**62, np.int64(2**62)])
NOT_FINITE = [float("nan"), float("inf"), -float("inf"), np.float32("nan"), 10**400, -(10**400)]
BAD_FLOATS = st.sampled_from([*NOT_FINITE, 1e308, -1e308, 1e200, 1e39, -1e39, True, *NOT_NUMBERS])
BAD_BOOLS = st.sampled_from([0, 1, "yes", "False", None, 1.0, [True]])
BAD_DTYPES = st.sampled_from(["float16", "int32", "complex128", "bool", "f8 ", "", "float", None, 64, 1.5, object(),
                              "(2)f8", "float32,float64", [("a", "f8")], np.int64])
DTYPES = st.sampled_from(["float32", "float64", np.float64, np.dtype("float32")])


def hostile_array(data, valid: np.ndarray, dtype: str, label: str):
    """A hostile stand-in for the array ``valid``: wrong type, rank or size, ragged, non-numeric,
    non-finite, or too large for ``dtype``."""
    shape = valid.shape
    kind = data.draw(st.sampled_from(["scalar", "ragged", "object", "strings", "bool", "complex", "dates",
                                      "rank_down", "rank_up", "empty", "last_axis", "nan", "inf", "overflow"]),
                     label=f"{label} kind")
    if kind == "scalar":
        return data.draw(st.sampled_from([None, "tokens", 3.0, 7, [], {}, object()]), label=label)
    if kind == "ragged":
        nested = valid.tolist()
        if valid.ndim == 1:
            return [nested, nested[:-1]] if len(nested) > 1 else [nested, []]
        nested[-1] = nested[-1][:-1] if len(nested[-1]) > 1 else nested[-1] + [nested[-1]]
        return nested
    if kind == "object":
        return valid.astype(object)
    if kind == "strings":
        return np.full(shape, "x")
    if kind == "bool":
        return np.zeros(shape, dtype=bool)
    if kind == "complex":
        return valid.astype(complex)
    if kind == "dates":
        return np.zeros(shape, dtype="datetime64[s]")
    if kind == "rank_down":
        return valid[0]
    if kind == "rank_up":
        return valid[None]
    if kind == "empty":
        return valid[:0]
    if kind == "last_axis":
        return np.concatenate([valid, valid[..., :1]], axis=-1) if valid.ndim else np.zeros(2)
    bad = np.array(valid, dtype=np.float64 if kind != "overflow" or dtype == "float32" else np.longdouble)
    flat = data.draw(st.integers(0, max(bad.size - 1, 0)), label=f"{label} index")
    if bad.size == 0:
        return bad
    bad.reshape(-1)[flat] = {"nan": np.nan, "inf": -np.inf}.get(kind, 0.0)
    if kind == "overflow":  # finite, but beyond the dtype it is cast to
        bad.reshape(-1)[flat] = 1e39 if dtype == "float32" else np.longdouble("1e400")
    return bad


def valid_array(data, array: np.ndarray, label: str):
    """``array`` as a caller may hand it over: as is, in another float dtype or layout, or as a nested list."""
    form = data.draw(st.sampled_from(["as_is", "float32", "fortran", "list", "view"]), label=f"{label} form")
    if form == "float32" and np.all(np.abs(array) < 1e38):  # only where float32 holds the values
        return array.astype(np.float32)
    if form == "fortran":
        return np.asfortranarray(array)
    if form == "list":
        return array.tolist()
    if form == "view":
        return array[::-1][::-1]
    return array


# --- tasks -----------------------------------------------------------------------------------------------


@fuzz(400)
@given(data=st.data())
def test_linear_regression_task_and_sample_refuse_hostile_arguments_or_draw_finite_batches(data):
    args = Arguments(data)
    kwargs = {
        "d": args("d", st.integers(1, 4), st.one_of(BAD_COUNTS, HUGE_COUNTS)),
        "n_context": args("n_context", st.integers(1, 5), st.one_of(BAD_COUNTS, HUGE_COUNTS)),
        "x_scale": args("x_scale", st.one_of(st.floats(0.1, 10.0), st.sampled_from(["paper", "authors_code"])),
                        st.one_of(BAD_FLOATS, st.sampled_from([0.0, -1.0, "Paper", 1e300]))),
        "w_scale": args("w_scale", st.floats(0.0, 10.0), st.one_of(BAD_FLOATS, st.just(-1.0))),
        "noise_std": args("noise_std", st.floats(0.0, 2.0), st.one_of(BAD_FLOATS, st.just(-0.5))),
        "n_distractors": args("n_distractors", st.integers(0, 1), st.one_of(BAD_COUNTS, st.just(99))),
        "dtype": args("dtype", DTYPES, BAD_DTYPES),
        "x_distribution": args("x_distribution", st.sampled_from(list(iclgd.tasks.X_DISTRIBUTIONS)),
                               st.sampled_from(["normal", "Uniform", "", None, 1, ["uniform"]])),
    }
    task = outcome(args, lambda: iclgd.LinearRegressionTask(**kwargs), lambda task: None)
    if task is None:
        return
    batch_size = args("batch_size", st.integers(1, 5), st.one_of(BAD_COUNTS, HUGE_COUNTS))
    seed = args("seed", st.one_of(st.integers(0, 2**63 - 1), st.builds(np.random.default_rng, st.integers(0, 9))),
                st.one_of(BAD_COUNTS, st.just(np.random.RandomState(0))))

    def check(batch):
        b, n, d = batch_size, task.n_context, task.d
        assert batch.tokens.shape == (b, n + 1, d + 1) and batch.targets.shape == (b,) and batch.weights.shape == (b, d)
        assert {batch.tokens.dtype, batch.targets.dtype, batch.weights.dtype} == {np.dtype(task.dtype)}
        assert finite(batch.tokens) and finite(batch.targets) and finite(batch.weights)

    needs = limits.task_sample_bytes(task, batch_size) if isinstance(batch_size, int) and 0 < batch_size < 2**31 else 0
    outcome(args, lambda: task.sample(batch_size, seed), check, peak=needs + SLACK)


# --- the model's config and init ---------------------------------------------------------------------------


@fuzz(400)
@given(data=st.data())
def test_lsa_config_and_init_params_refuse_hostile_arguments_or_build_finite_params(data):
    args = Arguments(data)
    d = args("d", st.integers(1, 4), st.one_of(BAD_COUNTS, HUGE_COUNTS))
    sizes = st.one_of(st.none(), st.integers(1, 6))
    kwargs = {
        "d": d,
        "n_layers": args("n_layers", st.integers(1, 3), st.one_of(BAD_COUNTS, st.sampled_from([10_001, 10**9]))),
        "n_heads": args("n_heads", st.integers(1, 3), st.one_of(BAD_COUNTS, HUGE_COUNTS)),
        "key_size": args("key_size", sizes, st.one_of(BAD_COUNTS.filter(lambda v: v is not None), HUGE_COUNTS)),
        "value_size": args("value_size", sizes, st.one_of(BAD_COUNTS.filter(lambda v: v is not None), HUGE_COUNTS)),
        "tied": args("tied", st.booleans(), BAD_BOOLS),
        "include_query": args("include_query", st.booleans(), BAD_BOOLS),
        "n_context": args("n_context", st.one_of(st.none(), st.integers(1, 5)),
                          st.one_of(BAD_COUNTS.filter(lambda v: v is not None), HUGE_COUNTS)),
        "dtype": args("dtype", DTYPES, BAD_DTYPES),
    }
    cfg = outcome(args, lambda: iclgd.LSAConfig(**kwargs), lambda cfg: None, peak=SLACK)
    if cfg is None:
        return
    assert all(type(getattr(cfg, f)) is int for f in ("d", "n_layers", "n_heads", "key_size", "value_size"))
    assert type(cfg.tied) is bool and type(cfg.include_query) is bool and cfg.dtype in ("float32", "float64")
    seed = args("seed", st.integers(0, 2**63 - 1), BAD_COUNTS)
    scale = args("scale", st.floats(0.0, 10.0), st.one_of(BAD_FLOATS, st.sampled_from([-1.0, 1e300])))

    def check(params):
        assert {name: value.shape for name, value in params.items()} == iclgd.param_shapes(cfg)
        assert all(value.dtype == np.dtype(cfg.dtype) and finite(value) for value in params.values())

    outcome(args, lambda: iclgd.init_params(cfg, seed=seed, scale=scale), check,
            peak=limits.init_params_bytes(cfg) + SLACK)


# --- the backends ----------------------------------------------------------------------------------------------

#: Configs the compiled engines see (few, so that jax compiles few programs).
ENGINE_CONFIGS = [
    (iclgd.LSAConfig(d=2, n_layers=1, n_heads=1), 3),
    (iclgd.LSAConfig(d=2, n_layers=2, n_heads=2, key_size=2, value_size=4, tied=True, include_query=True, dtype="float32"), 2),
]
METHODS = ["predict", "sensitivity", "forward", "loss", "loss_and_grad"]


@st.composite
def lsa_setups(draw, engine: bool):
    """(cfg, N, B): any small config for the oracle, one of ENGINE_CONFIGS (B = 2) for the engines."""
    if engine:
        cfg, n_context = draw(st.sampled_from(ENGINE_CONFIGS))
        return cfg, n_context, 2
    d = draw(st.integers(1, 4))
    cfg = iclgd.LSAConfig(d=d, n_layers=draw(st.integers(1, 3)), n_heads=draw(st.integers(1, 2)),
                          key_size=draw(st.integers(1, d + 2)), value_size=draw(st.integers(1, d + 2)),
                          tied=draw(st.booleans()), include_query=draw(st.booleans()), dtype=draw(st.sampled_from(["float32", "float64"])))
    return cfg, draw(st.integers(1, 5)), draw(st.integers(1, 4))


def hostile_params(data, params: dict, dtype: str):
    """Params with one thing wrong: not a dict, a name missing or extra, or one array hostile."""
    kind = data.draw(st.sampled_from(["not_a_dict", "missing", "extra", "odd_key", "array"]), label="params kind")
    if kind == "not_a_dict":
        return data.draw(st.sampled_from([None, [], list(params.values()), "params", 1.0, tuple(params.items())]), label="params")
    bad = dict(params)
    name = data.draw(st.sampled_from(sorted(params)), label="params name")
    if kind == "missing":
        del bad[name]
    elif kind == "extra":
        bad["layer99.w_q"] = params[name]
    elif kind == "odd_key":
        bad[1] = params[name]
    else:
        bad[name] = hostile_array(data, np.asarray(params[name]), dtype, f"params[{name}]")
    return bad


def check_engine_result(method: str, cfg, n_context: int, batch_size: int, result, expected) -> None:
    """Shape, dtype, finiteness; and the oracle's value (``expected``) within the dtype's round-off."""
    b, t, dim = batch_size, n_context + 1, cfg.d + 1
    tolerance = dict(rtol=1e-3, atol=1e-4) if cfg.dtype == "float32" else dict(rtol=1e-9, atol=1e-12)
    if method in ("loss", "loss_and_grad"):
        loss = result[0] if method == "loss_and_grad" else result
        assert isinstance(loss, float) and np.isfinite(loss)
        np.testing.assert_allclose(loss, expected[0] if method == "loss_and_grad" else expected, **tolerance)
        if method == "loss_and_grad":
            grads = result[1]
            assert {name: np.shape(value) for name, value in grads.items()} == iclgd.param_shapes(cfg)
            for name, value in grads.items():
                assert finite(value)
                np.testing.assert_allclose(np.asarray(value, np.float64), expected[1][name], **tolerance)
        return
    shapes = {"predict": [(b,)], "sensitivity": [(b, cfg.d)], "forward": [(b, t, dim)] * (cfg.n_layers + 1)}[method]
    arrays = result if method == "forward" else [result]
    assert [np.shape(a) for a in arrays] == shapes
    for array, oracle in zip(arrays, expected if method == "forward" else [expected]):
        assert np.asarray(array).dtype == np.dtype(cfg.dtype) and finite(array)
        np.testing.assert_allclose(np.asarray(array, np.float64), np.asarray(oracle, np.float64), **tolerance)


def fuzz_backend(data, backend_name: str) -> None:
    backend, oracle = iclgd.get_backend(backend_name), iclgd.get_backend("numpy")
    engine = backend_name != "numpy"
    cfg, n_context, batch_size = data.draw(lsa_setups(engine), label="setup")
    method = data.draw(st.sampled_from(METHODS), label="method")
    args = Arguments(data)
    task = iclgd.LinearRegressionTask(d=cfg.d, n_context=n_context)
    batch = task.sample(batch_size, seed=data.draw(st.integers(0, 2**32 - 1), label="seed"))
    params = {name: 0.3 * np.random.default_rng(0).standard_normal(shape) for name, shape in iclgd.param_shapes(cfg).items()}
    wrong_type = st.sampled_from([task, None, "lsa", {"d": cfg.d}, iclgd.LearnedGDConfig(d=cfg.d, n_context=n_context)])
    used_cfg = args("cfg", st.just(cfg), wrong_type)
    used_params = args("params", st.just(params).map(lambda p: {k: valid_array(data, v, k) for k, v in p.items()}),
                       st.builds(lambda: hostile_params(data, params, cfg.dtype)))
    tokens = args("tokens", st.builds(lambda: valid_array(data, batch.tokens, "tokens")),
                  st.builds(lambda: hostile_array(data, batch.tokens, cfg.dtype, "tokens")))
    if method in ("loss", "loss_and_grad"):
        targets = args("targets", st.builds(lambda: valid_array(data, batch.targets, "targets")),
                       st.builds(lambda: hostile_array(data, batch.targets, cfg.dtype, "targets")), also=("batch",))
        given_input = args("batch", st.just(types.SimpleNamespace(tokens=tokens, targets=targets)),
                           st.sampled_from([None, (batch.tokens, batch.targets), {"tokens": batch.tokens}, batch.tokens]))
    else:
        given_input = tokens

    def expected():
        """The oracle on the arguments as given (a valid form may round them, e.g. to float32)."""
        as_given = {name: np.asarray(value, np.float64) for name, value in used_params.items()}
        if method in ("loss", "loss_and_grad"):
            given = iclgd.Batch(np.asarray(given_input.tokens, np.float64), np.asarray(given_input.targets, np.float64), None)
            return getattr(oracle, method)(cfg, as_given, given)
        return getattr(oracle, method)(cfg, as_given, np.asarray(given_input, np.float64))

    peak = limits.lsa_pass_bytes(cfg, batch_size, n_context) + SLACK if backend_name == "numpy" else None
    outcome(args, lambda: getattr(backend, method)(used_cfg, used_params, given_input),
            lambda result: check_engine_result(method, cfg, n_context, batch_size, result, expected()), peak=peak)


def backend_fuzz_test(backend_name: str, max_examples: int):
    """The fuzz test of one backend's methods (a test per backend: each has its own example count)."""

    @pytest.mark.skipif(backend_name not in INSTALLED, reason=f"backend {backend_name!r} is not installed")
    @fuzz(max_examples)
    @given(data=st.data())
    def test(data):
        fuzz_backend(data, backend_name)

    return test


# the oracle is cheap; the compiled engines are held to it on fewer draws (jax compiles each config once)
test_the_numpy_backend_refuses_hostile_arguments_or_returns_finite_results_in_bounded_memory = backend_fuzz_test("numpy", 500)
test_the_numba_backend_refuses_hostile_arguments_or_returns_the_oracles_results = backend_fuzz_test("numba", 200)
test_the_jax_backend_refuses_hostile_arguments_or_returns_the_oracles_results = backend_fuzz_test("jax", 150)


# --- the constructions ---------------------------------------------------------------------------------------


@fuzz(300)
@given(data=st.data())
def test_gd_and_gdpp_constructions_refuse_hostile_arguments_or_run_gd(data):
    plus = data.draw(st.booleans(), label="GD++")
    args = Arguments(data)
    d, n_layers, n_context = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    has_n = data.draw(st.booleans(), label="cfg has n_context")
    cfg = iclgd.LSAConfig(d=d, n_layers=n_layers, value_size=d + 1, tied=data.draw(st.booleans()),
                          n_context=n_context if has_n else None, dtype=dtype)
    unfit = st.sampled_from([iclgd.LSAConfig(d=d, include_query=True, n_context=n_context),
                             iclgd.LSAConfig(d=d + 1, key_size=d, value_size=d + 2, n_context=n_context) if d > 0 else None,
                             iclgd.LinearRegressionTask(d=d, n_context=n_context), None, "cfg"])
    if plus:
        unfit = st.one_of(unfit, st.just(iclgd.LSAConfig(d=d, value_size=d, n_context=n_context)))
    used_cfg = args("cfg", st.just(cfg), unfit, also=("include_query", "key_size", "value_size", "n_context"))
    eta = args("eta", st.floats(-2.0, 2.0), BAD_FLOATS)
    gamma = args("gamma", st.floats(-0.5, 0.5), BAD_FLOATS) if plus else None
    w0_valid = np.random.default_rng(1).uniform(-1, 1, d)
    w0 = args("w0", st.one_of(st.none(), st.builds(lambda: valid_array(data, w0_valid, "w0"))),
              st.builds(lambda: hostile_array(data, w0_valid, dtype, "w0")))
    n_given = args("n_context", st.just(n_context) if has_n else st.sampled_from([n_context]),
                   st.one_of(BAD_COUNTS, st.just(n_context + 1)) if has_n else st.one_of(BAD_COUNTS.filter(lambda v: v is not None)))
    kwargs = {"eta": eta, "w0": w0, "n_context": n_given} | ({"gamma": gamma} if plus else {})
    build = iclgd.gdpp_construction if plus else iclgd.gd_construction

    def check(params):
        assert {name: v.shape for name, v in params.items()} == iclgd.param_shapes(cfg)
        assert all(v.dtype == np.dtype(dtype) and finite(v) for v in params.values())
        if dtype == "float64" and not args.suspects:  # the LSA with these weights runs n_layers steps of GD (GD++)
            tokens = iclgd.LinearRegressionTask(d=d, n_context=n_context).sample(3, seed=0).tokens
            start = tokens if w0 is None else iclgd.with_initial_guess(tokens, w0)
            model = iclgd.get_backend("numpy").predict(cfg, params, start)
            direct = (baselines.gdpp_predict(tokens, eta, gamma, n_layers, w0) if plus
                      else baselines.gd_predict(tokens, eta, n_layers, w0))
            np.testing.assert_allclose(model, direct, rtol=1e-9, atol=1e-9)

    outcome(args, lambda: build(used_cfg, **kwargs), check, peak=SLACK)


# --- the baselines -------------------------------------------------------------------------------------------


def gd_by_loops(tokens: np.ndarray, etas, gammas, w0) -> np.ndarray:
    """GD (gammas None) or GD++ on each context, one task and one step at a time."""
    predictions = []
    for task in np.asarray(tokens, dtype=np.float64):
        x, y, x_q = task[:-1, :-1].copy(), task[:-1, -1].copy(), task[-1, :-1].copy()
        n = len(y)
        w = np.zeros(x.shape[1]) if w0 is None else np.asarray(w0, np.float64)
        if gammas is None:
            for eta in etas:
                w = w - (eta / n) * x.T @ (x @ w - y)
            predictions.append(w @ x_q)
            continue
        y_q = -(x_q @ w)
        for eta, gamma in zip(etas, gammas):
            residual = x @ w - y
            x, x_q, y, y_q = (x - (gamma / n) * (x @ x.T) @ x, x_q - (gamma / n) * (x @ x_q) @ x,
                              y + (eta / n) * (x @ x.T) @ residual, y_q + (eta / n) * (x @ x_q) @ residual)
        predictions.append(-y_q)
    return np.array(predictions)


@fuzz(300)
@given(data=st.data())
def test_gd_and_gdpp_baselines_refuse_hostile_arguments_or_equal_gd_by_loops(data):
    plus = data.draw(st.booleans(), label="GD++")
    args = Arguments(data)
    d, n, b = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    batch = iclgd.LinearRegressionTask(d=d, n_context=n).sample(b, seed=data.draw(st.integers(0, 99)))
    steps = args("steps", st.integers(0, 4), st.one_of(BAD_COUNTS.filter(lambda v: v != 0), st.sampled_from([10_001, 2**40])))
    k = steps if type(steps) is int and 0 <= steps <= 4 else 2
    rates = st.one_of(st.floats(-1.0, 1.0), st.lists(st.floats(-1.0, 1.0), min_size=k, max_size=k))
    bad_rates = st.one_of(BAD_FLOATS, st.just([0.1] * (k + 1)), st.just([[0.1], [0.1, 0.2]]), st.just(np.full(k, np.nan)))
    tokens = args("tokens", st.builds(lambda: valid_array(data, batch.tokens, "tokens")),
                  st.builds(lambda: hostile_array(data, batch.tokens, "float64", "tokens")),
                  also=("w0",))  # tokens of other sizes are valid, and then w0 is the one that does not fit
    eta = args("eta", rates, bad_rates)
    gamma = args("gamma", rates, bad_rates) if plus else None
    w0_valid = np.random.default_rng(2).uniform(-1, 1, (b, d) if data.draw(st.booleans(), label="w0 per task") else d)
    w0 = args("w0", st.one_of(st.none(), st.just(w0_valid)), st.builds(lambda: hostile_array(data, w0_valid, "float64", "w0")))
    if plus:
        call = lambda: baselines.gdpp_predict(tokens, eta, gamma, steps, w0)  # noqa: E731
    else:
        call = lambda: baselines.gd_predict(tokens, eta, steps, w0)  # noqa: E731

    def check(prediction):
        given = np.asarray(tokens, np.float64)  # a hostile shape may be valid tokens of other sizes
        rows, inputs = given.shape[0], given.shape[2] - 1
        assert prediction.shape == (rows,) and prediction.dtype == np.float64 and finite(prediction)
        per_step = lambda rate: np.broadcast_to(np.asarray(rate, np.float64), (steps,))  # noqa: E731
        w0_rows = None if w0 is None else np.broadcast_to(np.asarray(w0, np.float64), (rows, inputs))
        expected = np.array([gd_by_loops(given[i : i + 1], per_step(eta), per_step(gamma) if plus else None,
                                         None if w0_rows is None else w0_rows[i])[0] for i in range(rows)])
        np.testing.assert_allclose(prediction, expected, rtol=1e-9, atol=1e-9)

    outcome(args, call, check, peak=limits.gdpp_bytes(b, n, d) + SLACK)


@fuzz(300)
@given(data=st.data())
def test_least_squares_and_ridge_refuse_hostile_arguments_or_solve_the_regression(data):
    args = Arguments(data)
    d, n, b = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    batch = iclgd.LinearRegressionTask(d=d, n_context=n, noise_std=0.1).sample(b, seed=data.draw(st.integers(0, 99)))
    scale = data.draw(st.sampled_from([1.0, 1e-150, 1e150]), label="token scale")  # large and tiny, but valid
    tokens = args("tokens", st.builds(lambda: valid_array(data, batch.tokens * scale, "tokens")),
                  st.builds(lambda: hostile_array(data, batch.tokens, "float64", "tokens")))
    ridge = args("ridge", st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), st.one_of(BAD_FLOATS, st.just(-1.0)))

    def check(prediction):
        given = np.asarray(tokens, np.float64) / scale  # the same problem in the unscaled units
        x, y, x_q = given[:, :-1, :-1], given[:, :-1, -1], given[:, -1, :-1]
        assert prediction.shape == (len(given),) and prediction.dtype == np.float64 and finite(prediction)
        r, inputs = ridge / scale**2, x.shape[2]
        for i in range(len(given)):
            if r == 0:
                w = np.linalg.pinv(x[i]) @ y[i]
            elif not np.isfinite(r):  # a ridge beyond float64 in these units: the solution is 0
                w = np.zeros(inputs)
            else:
                w = np.linalg.lstsq(np.vstack([x[i], np.sqrt(r) * np.eye(inputs)]),
                                    np.concatenate([y[i], np.zeros(inputs)]), rcond=None)[0]
            np.testing.assert_allclose(prediction[i] / scale, w @ x_q[i], rtol=1e-6, atol=1e-8)

    if ridge == 0.0 and data.draw(st.booleans(), label="least_squares_predict"):
        outcome(args, lambda: baselines.least_squares_predict(tokens), check, peak=SLACK)
    else:
        outcome(args, lambda: baselines.ridge_predict(tokens, ridge), check, peak=SLACK)


@fuzz(400)
@given(data=st.data())
def test_optimal_eta_refuses_hostile_arguments_or_gives_the_closed_form(data):
    args = Arguments(data)
    d = args("d", st.integers(1, 10**6), BAD_COUNTS)
    n = args("n_context", st.integers(1, 10**6), BAD_COUNTS)
    x_scale = args("x_scale", st.one_of(st.floats(1e-3, 1e3), st.sampled_from(["paper", "authors_code", 1e-150, 1e150])),
                   st.sampled_from([*NOT_FINITE, True, *NOT_NUMBERS, 0.0, -1.0, "Paper", 1e-200, 1e300]))
    w_scale = args("w_scale", st.one_of(st.floats(0.0, 1e3), st.just(1e150)), st.one_of(BAD_FLOATS, st.just(-1.0)))
    noise_std = args("noise_std", st.floats(0.0, 1e3), st.one_of(BAD_FLOATS, st.just(-1.0)))

    def check(eta):
        assert isinstance(eta, float) and np.isfinite(eta) and eta >= 0
        a = iclgd.tasks.resolve_x_scale(x_scale)
        moderate = lambda v: v == 0 or 1e-3 <= v <= 1e3  # noqa: E731 - where floats evaluate the formula well
        if moderate(a) and a > 0 and moderate(w_scale) and moderate(noise_std):  # the module doc's formula
            s2, m4, sw2, sigma2 = a**2 / 3, a**4 / 5, w_scale**2, noise_std**2
            curvature = (d / n) * s2 * (sw2 * (m4 + (n + d - 2) * s2**2) + sigma2 * s2)
            expected = sw2 * d * s2**2 / curvature if curvature else 0.0
            assert eta == pytest.approx(expected, rel=1e-12, abs=1e-300)

    outcome(args, lambda: baselines.optimal_eta(d, n, x_scale, w_scale, noise_std), check, peak=SLACK)


# --- overflow inside an engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend_name", INSTALLED)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_finite_inputs_whose_products_overflow_inside_an_engine_are_refused_naming_them(backend_name, method, data):
    backend = iclgd.get_backend(backend_name)
    cfg, n_context = data.draw(st.sampled_from(ENGINE_CONFIGS), label="cfg")
    batch = iclgd.LinearRegressionTask(d=cfg.d, n_context=n_context).sample(2, seed=0)
    top = 1e300 if cfg.dtype == "float64" else 1e36
    # squared, it overflows by far: so does every output (predictions are cubic in the tokens, losses
    # square the predictions, sensitivities are quadratic, gradients at least quadratic)
    size = data.draw(st.floats(top ** (1 / 2) * 1e5, top), label="token size")
    tokens = batch.tokens * size / np.max(np.abs(batch.tokens))
    params = {name: np.ones(shape, cfg.dtype) for name, shape in iclgd.param_shapes(cfg).items()}
    given_input = iclgd.Batch(tokens, batch.targets, batch.weights) if method in ("loss", "loss_and_grad") else tokens
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=r"^tokens .* too large .* overflows") as error:
        getattr(backend, method)(cfg, params, given_input)
    assert names(str(error.value), "params")
