"""The optimiser: composable (init, update) transforms, Adam as their chain (bit-for-bit the
formula), the schedules, and trainers that stop before a non-finite parameter update."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iclgd
from iclgd.backends.training import StepRecord, initial_state, trainer_for
from iclgd.config import run_config_from_dict
from iclgd.optim import (
    SCHEDULES,
    AdamConfig,
    AdamState,
    ClipState,
    EmptyState,
    ScheduleState,
    adam_chain,
    adam_chain_state,
    adam_state_of,
    adam_update,
    apply_updates,
    chain,
    clip_by_global_norm,
    constant_schedule,
    cosine_schedule,
    global_norm,
    identity,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_schedule,
    schedule_from_name,
    warmup_cosine_schedule,
)

B1, B2, EPS = 0.9, 0.999, 1e-8


def draw_params(rng, dtype):
    return {"a": rng.standard_normal((2, 3)).astype(dtype), "b": rng.standard_normal(4).astype(dtype)}


def draw_grads(rng, params, scale=1.0):
    return {k: (scale * rng.standard_normal(p.shape)).astype(p.dtype) for k, p in params.items()}


def adam_by_formula(params, grads_seq, lr, clip):
    """Clipped Adam written out, in the order pinned for bit-for-bit resume: the clip scale
    applied to g, the moments, the bias corrections with t, (m/c1)/(sqrt(v/c2)+eps), p - lr*update."""
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
        scale = min(1.0, clip / norm) if clip is not None else 1.0
        new_params = {}
        for k, p in params.items():
            g = grads[k] * scale
            m[k] = (B1 * m[k] + (1.0 - B1) * g).astype(p.dtype)
            v[k] = (B2 * v[k] + (1.0 - B2) * g * g).astype(p.dtype)
            update = (m[k] / (1.0 - B1**t)) / (np.sqrt(v[k] / (1.0 - B2**t)) + EPS)
            new_params[k] = (p - lr * update).astype(p.dtype)
        params = new_params
    return params, m, v


def assert_dicts_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k


# --- the transform interface ---------------------------------------------------------------------


def test_a_chain_of_no_transforms_is_the_identity():
    params = draw_params(np.random.default_rng(0), np.float64)
    grads = draw_grads(np.random.default_rng(1), params)
    empty = chain()
    state = empty.init(params)
    assert state == ()
    updates, new_state = empty.update(grads, state, params)
    assert new_state == ()
    assert_dicts_equal(updates, grads)


def test_identity_passes_updates_through_and_keeps_an_empty_state():
    grads = draw_grads(np.random.default_rng(1), draw_params(np.random.default_rng(0), np.float32))
    updates, state = identity().update(grads, identity().init(grads))
    assert updates is grads and state == EmptyState()


def test_a_chain_feeds_each_transform_the_previous_ones_output():
    grads = {"w": np.array([3.0, 4.0])}  # norm 5
    clip_then_double = chain(clip_by_global_norm(1.0), scale_by_schedule(constant_schedule(2.0)))
    double_then_clip = chain(scale_by_schedule(constant_schedule(2.0)), clip_by_global_norm(1.0))
    first, _ = clip_then_double.update(grads, clip_then_double.init(grads))
    second, _ = double_then_clip.update(grads, double_then_clip.init(grads))
    assert global_norm(first) == pytest.approx(2.0, rel=1e-15)
    assert global_norm(second) == pytest.approx(1.0, rel=1e-15)


def test_the_state_of_a_chain_is_the_tuple_of_its_transforms_states():
    params = draw_params(np.random.default_rng(0), np.float64)
    state = chain(clip_by_global_norm(1.0), scale_by_adam(), scale_by_learning_rate(0.1)).init(params)
    assert isinstance(state[0], ClipState) and math.isnan(state[0].norm) and state[2] == ScheduleState(0)
    assert state[1].count == 0 and all(not m.any() for m in state[1].m.values())


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.sampled_from([None, 0.05, 1e3]))
def test_updates_leave_their_inputs_unchanged(seed, clip):
    rng = np.random.default_rng(seed)
    params = draw_params(rng, np.float64)
    transform = adam_chain(AdamConfig(lr=0.01, clip_norm=clip))
    state = transform.init(params)
    for _ in range(2):  # the second update reads non-zero moments
        grads = draw_grads(rng, params)
        copies = [{k: x.copy() for k, x in d.items()} for d in (params, grads, state[1].m, state[1].v)]
        updates, new_state = transform.update(grads, state, params)
        for before, after in zip(copies, (params, grads, state[1].m, state[1].v)):
            assert_dicts_equal(before, after)
        params, state = apply_updates(params, updates), new_state


def test_apply_updates_adds_and_keeps_the_parameters_dtype():
    params = {"w": np.array([1.0, 2.0], np.float32)}
    new = apply_updates(params, {"w": np.array([0.5, -0.25], np.float64)})
    assert new["w"].dtype == np.float32 and np.array_equal(new["w"], np.array([1.5, 1.75], np.float32))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: clip_by_global_norm(-1.0), "max_norm"),
        (lambda: clip_by_global_norm(float("nan")), "max_norm"),
        (lambda: scale_by_adam(b1=1.0), "b1"),
        (lambda: scale_by_adam(b2=-0.1), "b2"),
        (lambda: scale_by_adam(eps=-1.0), "eps"),
        (lambda: schedule_from_name("linear", 0.1), "schedule must be one of"),
        (lambda: chain(identity(), "adam"), "GradientTransformation"),
    ],
)
def test_impossible_transforms_raise_value_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --- clipping -------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(st.integers(0, 2**32 - 1), st.floats(1.001, 100.0))
def test_clipping_leaves_updates_whose_norm_is_below_the_clip_unchanged(seed, headroom):
    grads = draw_grads(np.random.default_rng(seed), draw_params(np.random.default_rng(seed), np.float64))
    clip = clip_by_global_norm(headroom * global_norm(grads))
    updates, _ = clip.update(grads, clip.init(grads))
    assert_dicts_equal(updates, grads)


@settings(max_examples=30)
@given(st.integers(0, 2**32 - 1), st.floats(1e-3, 0.999))
def test_clipping_rescales_updates_above_the_clip_to_the_clip(seed, fraction):
    grads = draw_grads(np.random.default_rng(seed), draw_params(np.random.default_rng(seed), np.float64))
    norm = global_norm(grads)
    clip = clip_by_global_norm(fraction * norm)
    updates, _ = clip.update(grads, clip.init(grads))
    assert global_norm(updates) == pytest.approx(fraction * norm, rel=1e-12)
    for k in grads:  # the direction is kept
        np.testing.assert_allclose(updates[k], fraction * grads[k], rtol=1e-12)


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_adams_clipping_branch_below_the_clip_equals_no_clipping(seed, dtype):
    rng = np.random.default_rng(seed)
    params = draw_params(rng, dtype)
    clipped, unclipped = (AdamConfig(lr=0.01, clip_norm=clip) for clip in (1e6, None))
    state_c = state_u = AdamState.zeros_like(params)
    params_c = params_u = params
    for _ in range(3):
        grads = draw_grads(rng, params)
        params_c, state_c, _ = adam_update(clipped, params_c, grads, state_c)
        params_u, state_u, _ = adam_update(unclipped, params_u, grads, state_u)
    assert_dicts_equal(params_c, params_u)
    assert_dicts_equal(state_c.m, state_u.m)
    assert_dicts_equal(state_c.v, state_u.v)


# --- Adam: the chain is the formula, bit for bit ------------------------------------------------


@st.composite
def adam_problems(draw):
    """(params, gradients of 1-6 steps, lr, clip or None, the formula's params, m and v after them)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lr, clip = draw(st.floats(1e-4, 1e-1)), draw(st.sampled_from([None, 0.05, 1.0, 1e3]))
    params = draw_params(rng, draw(st.sampled_from([np.float32, np.float64])))
    grads_seq = [draw_grads(rng, params, scale=rng.uniform(0.01, 10.0)) for _ in range(draw(st.integers(1, 6)))]
    return (params, grads_seq, lr, clip, *adam_by_formula(params, grads_seq, lr, clip))


@settings(max_examples=60)
@given(adam_problems())
def test_adam_chain_equals_the_clipped_adam_formula_bit_for_bit(problem):
    params, grads_seq, lr, clip, expected_params, expected_m, expected_v = problem
    steps = len(grads_seq)
    transform = chain(clip_by_global_norm(clip) if clip is not None else identity(), scale_by_adam(B1, B2, EPS), scale_by_learning_rate(lr))
    ours, state = params, transform.init(params)
    for grads in grads_seq:
        updates, state = transform.update(grads, state, ours)
        ours = apply_updates(ours, updates)
    assert_dicts_equal(ours, expected_params)
    assert_dicts_equal(state[1].m, expected_m)
    assert_dicts_equal(state[1].v, expected_v)
    assert state[1].count == state[2].count == steps


@settings(max_examples=40)
@given(adam_problems())
def test_adam_update_equals_the_clipped_adam_formula_bit_for_bit(problem):
    params, grads_seq, lr, clip, expected_params, expected_m, expected_v = problem
    steps = len(grads_seq)

    config, ours, state = AdamConfig(lr=lr, clip_norm=clip), params, AdamState.zeros_like(params)
    for grads in grads_seq:
        ours, state, norm = adam_update(config, ours, grads, state)
        assert norm == global_norm(grads)  # reported before clipping
    assert_dicts_equal(ours, expected_params)
    assert_dicts_equal(state.m, expected_m)
    assert_dicts_equal(state.v, expected_v)
    assert state.count == steps


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.sampled_from(SCHEDULES))
def test_adam_update_uses_the_rate_of_the_number_of_updates_already_made(seed, schedule):
    rng = np.random.default_rng(seed)
    params = draw_params(rng, np.float64)
    scheduled = AdamConfig(lr=0.05, clip_norm=1.0, schedule=schedule, warmup_steps=2, total_steps=5)
    ours, state, theirs, their_state = params, AdamState.zeros_like(params), params, AdamState.zeros_like(params)
    for _ in range(7):
        grads = draw_grads(rng, params)
        constant = AdamConfig(lr=scheduled.learning_rate(their_state.count), clip_norm=1.0)
        ours, state, _ = adam_update(scheduled, ours, grads, state)
        theirs, their_state, _ = adam_update(constant, theirs, grads, their_state)
        assert_dicts_equal(ours, theirs)


def test_adam_chain_state_and_the_checkpoints_adam_state_map_to_each_other():
    params = draw_params(np.random.default_rng(0), np.float32)
    adam = AdamState({k: p + 1 for k, p in params.items()}, {k: p * p for k, p in params.items()}, 17)
    chain_state = adam_chain_state(adam)
    assert adam_state_of(chain_state) is adam and chain_state[2] == ScheduleState(17)
    init = adam_chain(AdamConfig(clip_norm=1.0)).init(params)
    assert type(init) is type(chain_state) and len(init) == len(chain_state) and init[2] == ScheduleState(0)


def test_adam_with_clipping_equals_optax():
    optax = pytest.importorskip("optax", reason="optax is in the jax extra")
    jnp = pytest.importorskip("jax.numpy")
    import jax

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(5)}
    config = AdamConfig(lr=0.01, clip_norm=0.5)
    reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-8))
    opt_state = reference.init({k: jnp.asarray(v) for k, v in params.items()})
    ours, state = dict(params), AdamState.zeros_like(params)
    theirs = {k: jnp.asarray(v) for k, v in params.items()}
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        ours, state, _ = adam_update(config, ours, grads, state)
        updates, opt_state = reference.update({k: jnp.asarray(v) for k, v in grads.items()}, opt_state, theirs)
        theirs = optax.apply_updates(theirs, updates)
    for k in params:
        np.testing.assert_allclose(ours[k], np.asarray(theirs[k]), rtol=1e-10, atol=1e-14)


# --- schedules and the learning rate ----------------------------------------------------------------


def test_the_first_update_uses_the_rate_at_step_zero():
    rates = [0.5, 0.25, 0.125]
    transform = scale_by_learning_rate(lambda step: rates[step])
    state, seen = transform.init({}), []
    for _ in rates:
        updates, state = transform.update({"w": np.ones(2)}, state)
        seen.append(updates["w"][0])
    assert seen == [-0.5, -0.25, -0.125]  # descent: u <- -lr_t u, t = 0, 1, 2
    assert state == ScheduleState(3)


def test_scale_by_schedule_multiplies_without_flipping_the_sign():
    transform = scale_by_schedule(lambda step: 3.0 * (step + 1))
    state = transform.init({})
    first, state = transform.update({"w": np.array([2.0])}, state)
    second, state = transform.update({"w": np.array([2.0])}, state)
    assert first["w"][0] == 6.0 and second["w"][0] == 12.0


def test_the_constant_schedule_is_the_rate_at_every_step():
    assert [constant_schedule(0.3)(t) for t in (0, 1, 10**6)] == [0.3, 0.3, 0.3]
    assert AdamConfig(lr=0.3).learning_rate(12345) == 0.3


def test_warm_up_rises_linearly_to_the_peak_at_its_last_step():
    rate = warmup_cosine_schedule(0.1, warmup_steps=10, total_steps=110)
    assert rate(0) == pytest.approx(0.01, rel=1e-15)  # 0.1 * 1 / 10
    assert rate(1) == pytest.approx(0.02, rel=1e-15)  # 0.1 * 2 / 10
    assert rate(9) == pytest.approx(0.1, rel=1e-15)  # 0.1 * 10 / 10


def test_warmup_cosine_decays_from_the_peak_after_warm_up_to_zero_at_total_steps():
    rate = warmup_cosine_schedule(0.1, warmup_steps=10, total_steps=110)
    assert rate(10) == pytest.approx(0.1, rel=1e-15)  # cos(0) = 1
    assert rate(60) == pytest.approx(0.05, rel=1e-15)  # halfway: cos(pi/2) = 0
    assert rate(110) == 0.0 and rate(200) == 0.0


def test_cosine_starts_at_the_peak_and_reaches_zero_at_total_steps():
    rate = cosine_schedule(0.1, total_steps=100)
    assert rate(0) == 0.1
    assert rate(25) == pytest.approx(0.1 * (1 + math.sqrt(0.5)) / 2, rel=1e-15)
    assert rate(50) == pytest.approx(0.05, rel=1e-15)
    assert rate(100) == 0.0 and rate(150) == 0.0


@pytest.mark.parametrize("name", SCHEDULES)
def test_adam_configs_learning_rate_is_the_named_schedule(name):
    config = AdamConfig(lr=0.2, schedule=name, warmup_steps=4, total_steps=20)
    rate = schedule_from_name(name, 0.2, warmup_steps=4, total_steps=20)
    assert [config.learning_rate(t) for t in range(25)] == [rate(t) for t in range(25)]


# --- trainers stop before a non-finite parameter update ------------------------------------------

BACKENDS = [("numpy", "numpy"), ("numba", "numpy"), ("jax", "numpy"), ("jax", "jax")]


def lsa_float32(backend, sampler, lr):
    """A small float32 LSA run; clip_norm keeps its default (10), so with lr = 1e300 the loss and
    gradient stay finite and only the new params overflow (float32(1e300) = inf)."""
    return run_config_from_dict(
        {"task": {"d": 3, "n_context": 5}, "model": {"dtype": "float32"},
         "train": {"batch_size": 16, "lr": lr, "backend": backend, "sampler": sampler}}
    )


def backend_or_skip(name):
    if name != "numpy":
        pytest.importorskip(name, reason=f"the {name} backend needs its extra: pip install 'iclgd[{name}]'")
    return iclgd.get_backend(name)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name, sampler", BACKENDS)
def test_an_update_to_non_finite_params_stops_the_run_before_the_state_advances(name, sampler):
    backend = backend_or_skip(name)
    good, _ = trainer_for(backend, lsa_float32(name, sampler, 1e-3)).advance(initial_state(lsa_float32(name, sampler, 1e-3)), 3)
    state, records = trainer_for(backend, lsa_float32(name, sampler, 1e300)).advance(good, 5)

    assert len(records) == 1 and records[0].step == 3
    assert not records[0].finite and not records[0].params_finite
    assert np.isfinite(records[0].loss) and np.isfinite(records[0].grad_norm)  # only the params blew up
    assert state.step == 3 and state.adam.count == 3
    assert all(np.isfinite(p).all() for p in state.params.values())
    assert_dicts_equal(state.params, good.params)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("sampler", ["numpy", "jax"])
def test_vmapped_seeds_stop_before_an_update_to_non_finite_params(sampler):
    backend = backend_or_skip("jax")
    config = lsa_float32("jax", sampler, 1e300)
    many = backend.seeds_trainer(config, [0, 1])
    starts = many.initial_states()
    states, records = many.advance(starts, 4)
    for start, state, seed_records in zip(starts, states, records):
        assert [r.params_finite for r in seed_records] == [False]
        assert state.step == 0
        assert_dicts_equal(state.params, start.params)


def test_a_step_record_is_finite_only_when_loss_grad_norm_and_params_are():
    assert StepRecord(0, 1.0, 0.1, 2.0).finite
    assert not StepRecord(0, 1.0, 0.1, 2.0, params_finite=False).finite
    assert not StepRecord(0, float("nan"), 0.1, 2.0).finite
    assert not StepRecord(0, 1.0, 0.1, float("inf")).finite


def test_clipping_reports_the_norm_it_measured_so_no_one_measures_it_again():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}  # global norm 5
    for max_norm in (1.0, 10.0, math.inf):
        _, state = clip_by_global_norm(max_norm).update(grads, clip_by_global_norm(max_norm).init(grads))
        assert state == ClipState(5.0)
    _, _, reported = adam_update(AdamConfig(lr=0.1), {k: np.zeros_like(v) for k, v in grads.items()}, grads,
                                 AdamState.zeros_like(grads))
    assert reported == 5.0
