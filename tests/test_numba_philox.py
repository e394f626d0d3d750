"""The Philox data stream of the numba backend (iclgd.backends.numba_philox), as a specification:
the generator is Philox4x32-10 (known-answer vectors; the algorithm's structure held to NumPy's
Philox4x64), its uniforms and normals have the right laws, a batch has the task family's
moments, a task depends on (seed, step, task index) alone, and the gradient on a batch equals
the NumPy oracle on the same draws."""
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_params

numba = pytest.importorskip("numba", reason="the Philox stream needs the numba extra: pip install 'iclgd[numba]'")

import iclgd  # noqa: E402
from iclgd.backends import numba_lanes, numba_philox  # noqa: E402
from iclgd.backends.numba_backend import loss_and_grad_on_tokens  # noqa: E402
from iclgd.backends.numba_philox import philox4x32_10, philox_sampled_grad, philox_task_batch  # noqa: E402
from iclgd.checks import relative_error  # noqa: E402
from iclgd.models.families import module_of  # noqa: E402
from iclgd.tasks.examples import Examples  # noqa: E402
from iclgd.tokens.constructed import encode  # noqa: E402

MC_BOUND = 5.0  # Monte Carlo checks pass within 5 standard errors
words32 = st.integers(0, 2**32 - 1)
stream_ints = st.integers(0, 2**64 - 1)

# Random123's kat_vectors, "philox4x32 10": counter (4 words), key (2 words) -> output (4 words)
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def reference_philox(counter, key, bits, multipliers, weyl, rounds=10):
    """Philox4xW-R in plain Python integers, written from the paper (key bumped before rounds 2..R)."""
    mask = (1 << bits) - 1
    c, k = list(counter), list(key)
    for r in range(rounds):
        if r > 0:
            k = [(k[0] + weyl[0]) & mask, (k[1] + weyl[1]) & mask]
        p0, p1 = multipliers[0] * c[0], multipliers[1] * c[2]
        c = [(p1 >> bits) ^ c[1] ^ k[0], p1 & mask, (p0 >> bits) ^ c[3] ^ k[1], p0 & mask]
    return c


def words_of(value, n, bits):
    return [(value >> (bits * i)) & ((1 << bits) - 1) for i in range(n)]


def standard_errors_away(sample_mean, expected, se):
    return abs(sample_mean - expected) / se


def uniform_units(dtype, n_tasks=10_000, n_context=9, d=10, a=1.0):
    """~1e6 inputs mapped back to (0, 1): U = (x / a + 1) / 2."""
    _, x = philox_task_batch(11, 5, n_tasks, n_context, d, a, dtype)
    return (x.astype(np.float64).ravel() / a + 1.0) / 2.0


def standard_normals(dtype, n_tasks=100_000, d=10):
    w, _ = philox_task_batch(12, 6, n_tasks, 1, d, 1.0, dtype)
    return w.astype(np.float64).ravel()


# --- the generator -----------------------------------------------------------------------------------


def test_blocks_equal_the_published_known_answer_vectors():
    counters = np.array([c for c, _, _ in KNOWN_ANSWERS], np.uint64)
    keys = np.array([k for _, k, _ in KNOWN_ANSWERS], np.uint64)
    expected = np.array([out for _, _, out in KNOWN_ANSWERS], np.uint32)
    np.testing.assert_array_equal(philox4x32_10(counters, keys), expected)


@pytest.mark.parametrize("counter, key", [(0, 0), (1, 0), (2**200 + 12345, 2**100 + 7), (2**256 - 2, 2**128 - 1)])
def test_the_reference_structure_at_64_bits_is_numpys_philox(counter, key):
    # NumPy's Philox is Philox4x64-10 (its own constants), and it raises the counter before each block
    bit_generator = np.random.Philox(counter=(counter - 1) % 2**256, key=key)
    ours = reference_philox(words_of(counter, 4, 64), words_of(key, 2, 64), 64,
                            (0xD2E7470EE14C6C93, 0xCA5A826395121157), (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B))
    assert [int(v) for v in bit_generator.random_raw(4)] == ours


@settings(max_examples=30)
@given(st.lists(words32, min_size=4, max_size=4), st.lists(words32, min_size=2, max_size=2))
def test_blocks_equal_the_reference_at_32_bits_on_drawn_counters_and_keys(counter, key):
    expected = reference_philox(counter, key, 32, numba_philox.MULTIPLIERS, numba_philox.WEYL)
    assert philox4x32_10(np.array([counter]), np.array([key]))[0].tolist() == expected


def test_the_reference_at_32_bits_gives_the_known_answers():
    for counter, key, expected in KNOWN_ANSWERS:
        assert reference_philox(counter, key, 32, numba_philox.MULTIPLIERS, numba_philox.WEYL) == list(expected)


@pytest.mark.parametrize("dtype, bits", [("float64", 53), ("float32", 24)])
def test_a_task_is_the_documented_function_of_its_blocks(dtype, bits):
    seed, step, b, d, n_context, a = 2**40 + 3, 2**33 + 9, 2, 3, 2, 0.75
    weights, inputs = philox_task_batch(seed, step, b + 1, n_context, d, a, dtype)
    per_block = 2 if bits == 53 else 4
    n_weight_blocks = math.ceil(d / per_block)
    n_blocks = n_weight_blocks + math.ceil((n_context + 1) * d / per_block)
    counters = np.array([[j, b, seed >> 32, step >> 32] for j in range(n_blocks)], np.uint64)
    keys = np.array([[seed % 2**32, step % 2**32]] * n_blocks, np.uint64)
    blocks = philox4x32_10(counters, keys).astype(np.int64)
    if bits == 53:
        k = (blocks[:, 0::2] >> 5) * 2**26 + (blocks[:, 1::2] >> 6)  # two 53-bit draws a block
    else:
        k = blocks >> 8  # four 24-bit draws a block
    units = (2 * k + 1) / 2.0 ** (bits + 1)
    u1, u2 = units[:n_weight_blocks, 0::2], units[:n_weight_blocks, 1::2]
    radius, angle = np.sqrt(-2 * np.log(u1)), 2 * np.pi * u2
    normals = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1).ravel()[:d]
    uniforms = (a * ((2 * k[n_weight_blocks:] + 1 - 2**bits) / 2.0**bits)).ravel()[: (n_context + 1) * d]
    np.testing.assert_allclose(weights[b], normals.astype(dtype), rtol=1e-14 if bits == 53 else 1e-6)
    np.testing.assert_array_equal(inputs[b], uniforms.reshape(n_context + 1, d).astype(dtype))


# --- the kernel's own ln, cos and sin (Box-Muller without libm) ----------------------------------------

@numba.njit(fastmath=numba_lanes.FAST, error_model="numpy")  # as the kernel compiles them
def _log_units(u, out):
    for i in range(u.size):
        out[i] = numba_lanes._log_unit(u[i])


@numba.njit(fastmath=numba_lanes.FAST, error_model="numpy")
def _cos_sin_turns(u, cos_out, sin_out):
    for i in range(u.size):
        cos_out[i] = numba_lanes._cos_turn(u[i], 0)
        sin_out[i] = numba_lanes._cos_turn(u[i], 1)


def unit_grid(bits, k):
    """The unit draws U = (2k + 1) / 2^(bits + 1) of the stream, as float64 (rounded as the kernel does)."""
    return (2 * np.asarray(k, np.int64) + 1).astype(np.float64) * 2.0 ** -(bits + 1)


@settings(max_examples=20)
@given(st.sampled_from([24, 53]), st.integers(0, 2**32 - 1))
def test_the_kernels_log_is_within_two_units_in_the_last_place_of_libms(bits, seed):
    k = np.random.default_rng(seed).integers(0, 2**bits, 20_000)
    k[:4] = [0, 1, 2**bits - 1, 2 ** (bits - 1)]  # the ends and the middle of (0, 1)
    u = unit_grid(bits, k)
    ours, truth = np.empty_like(u), np.log(u)
    _log_units(u, ours)
    exact_zero = truth == 0.0  # U rounded to 1 (53 bits, k = 2^53 - 1)
    assert np.all(ours[exact_zero] == 0.0)
    assert np.max(np.abs(ours - truth)[~exact_zero] / np.spacing(np.abs(truth[~exact_zero]))) <= 2.0


@settings(max_examples=20)
@given(st.sampled_from([24, 53]), st.integers(0, 2**32 - 1))
def test_the_kernels_cos_and_sin_of_a_turn_are_within_two_units_in_the_last_place(bits, seed):
    """Against libm on the exactly reduced angle: 2 pi U = q pi/2 + 2 pi v, v = U - q/4 (exact),
    so that the reference keeps its relative accuracy near the zeros of cos and sin."""
    k = np.random.default_rng(seed).integers(0, 2**bits, 20_000)
    k[:3] = [0, 2**bits - 1, 2 ** (bits - 2)]
    u = unit_grid(bits, k)
    quadrant = np.floor(4 * u + 0.5)
    theta = 2 * np.pi * (u - quadrant / 4)
    c, s = np.cos(theta), np.sin(theta)
    turn = quadrant.astype(np.int64) % 4
    cos_truth = np.choose(turn, [c, -s, -c, s])
    sin_truth = np.choose(turn, [s, c, -s, -c])
    cos_ours, sin_ours = np.empty_like(u), np.empty_like(u)
    _cos_sin_turns(u, cos_ours, sin_ours)
    for ours, truth in ((cos_ours, cos_truth), (sin_ours, sin_truth)):
        assert np.max(np.abs(ours - truth) / np.spacing(np.abs(truth))) <= 2.0
    assert np.max(np.abs(cos_ours - np.cos(2 * np.pi * u))) <= 1e-15  # and near libm on the unreduced angle


# --- the laws of the draws -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, bits", [("float64", 53), ("float32", 24)])
def test_unit_inputs_are_odd_multiples_of_the_grid_step_inside_the_open_interval(dtype, bits):
    _, x = philox_task_batch(3, 4, 500, 9, 10, 1.0, dtype)
    scaled = x.astype(np.float64) * 2.0**bits
    assert np.all(np.abs(x) < 1.0)
    assert np.array_equal(scaled, np.round(scaled)) and np.all(np.round(scaled) % 2 == 1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_uniform_draws_have_mean_half_and_variance_one_twelfth(dtype):
    u = uniform_units(dtype)
    n = u.size
    assert standard_errors_away(u.mean(), 0.5, math.sqrt(1 / 12 / n)) < MC_BOUND
    assert standard_errors_away(u.var(), 1 / 12, math.sqrt((1 / 80 - 1 / 144) / n)) < MC_BOUND


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_uniform_draws_fall_below_each_threshold_with_its_probability(dtype):
    u = uniform_units(dtype)
    assert np.all((u > 0) & (u < 1))
    for q in (0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999):
        assert standard_errors_away(np.mean(u < q), q, math.sqrt(q * (1 - q) / u.size)) < MC_BOUND, q


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_normal_draws_have_mean_zero_variance_one_skew_zero_and_kurtosis_three(dtype):
    z = standard_normals(dtype)
    n = z.size
    assert standard_errors_away(z.mean(), 0.0, math.sqrt(1 / n)) < MC_BOUND
    assert standard_errors_away(np.mean(z**2), 1.0, math.sqrt(2 / n)) < MC_BOUND
    assert standard_errors_away(np.mean(z**3), 0.0, math.sqrt(15 / n)) < MC_BOUND
    assert standard_errors_away(np.mean(z**4), 3.0, math.sqrt(96 / n)) < MC_BOUND  # Var z^4 = 105 - 9


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_normal_draws_fall_within_one_two_and_three_sigma_with_the_gaussian_probabilities(dtype):
    z = np.abs(standard_normals(dtype))
    for k in (1.0, 2.0, 3.0):
        p = math.erf(k / math.sqrt(2))  # 0.6827, 0.9545, 0.9973
        assert standard_errors_away(np.mean(z < k), p, math.sqrt(p * (1 - p) / z.size)) < MC_BOUND, k


def test_a_batch_has_the_task_familys_moments():
    d, n_context, a, n_tasks = 4, 9, 0.7, 50_000
    w, x = philox_task_batch(21, 8, n_tasks, n_context, d, a, "float64")
    assert np.all(standard_errors_away(w.mean(axis=0), 0.0, math.sqrt(1 / n_tasks)) < MC_BOUND)  # E w = 0
    cov = w.T @ w / n_tasks  # Cov w = I: Var(w_i w_j) is 2 on the diagonal, 1 off it
    se = np.where(np.eye(d, dtype=bool), math.sqrt(2 / n_tasks), math.sqrt(1 / n_tasks))
    assert np.all(np.abs(cov - np.eye(d)) / se < MC_BOUND)
    flat = x.reshape(-1, d)
    assert np.all(np.abs(flat) < a)
    assert np.all(standard_errors_away(flat.mean(axis=0), 0.0, a / math.sqrt(3 * flat.shape[0])) < MC_BOUND)
    assert np.all(standard_errors_away(np.mean(flat**2, axis=0), a**2 / 3, a**2 * math.sqrt(4 / 45 / flat.shape[0])) < MC_BOUND)
    y2 = np.einsum("btd,bd->bt", x, w).ravel() ** 2  # labels y = w.x: E y^2 = d a^2 / 3
    assert standard_errors_away(y2.mean(), d * a**2 / 3, y2.std() / math.sqrt(y2.size)) < MC_BOUND


# --- the stream: a task depends on (seed, step, task index) alone ------------------------------------


def test_draws_are_the_same_on_one_thread_and_on_two():
    cfg = iclgd.LSAConfig(d=4, n_layers=3, n_heads=2)
    params = random_params(cfg, 1, 0.4)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append((philox_task_batch(5, 6, 301, 7, 4, 1.0), philox_sampled_grad(cfg, params, 5, 6, 301, 7, 1.0)))
    finally:
        numba.set_num_threads(before)
    (batch_one, (loss_one, grads_one)), (batch_two, (loss_two, grads_two)) = results
    assert all(np.array_equal(p, q) for p, q in zip(batch_one, batch_two))
    assert loss_one == loss_two and all(np.array_equal(grads_one[k], grads_two[k]) for k in grads_one)


@settings(max_examples=15)
@given(stream_ints, stream_ints, st.integers(1, 40), st.integers(1, 40))
def test_a_task_does_not_depend_on_the_batch_size_it_is_drawn_in(seed, step, small, large):
    small, large = sorted((small, large))
    w_small, x_small = philox_task_batch(seed, step, small, 3, 5, 1.0)
    w_large, x_large = philox_task_batch(seed, step, large, 3, 5, 1.0)
    assert np.array_equal(w_small, w_large[:small]) and np.array_equal(x_small, x_large[:small])


@settings(max_examples=20)
@given(stream_ints, stream_ints)
def test_the_same_seed_and_step_give_the_same_batch(seed, step):
    first, second = philox_task_batch(seed, step, 3, 2, 3, 1.0), philox_task_batch(seed, step, 3, 2, 3, 1.0)
    assert all(np.array_equal(p, q) for p, q in zip(first, second))


@settings(max_examples=20)
@given(stream_ints, stream_ints, stream_ints, stream_ints)
def test_different_seeds_or_steps_give_different_batches(seed, step, other_seed, other_step):
    if (seed, step) == (other_seed, other_step):
        other_step = (step + 1) % 2**64
    first, second = philox_task_batch(seed, step, 3, 2, 3, 1.0), philox_task_batch(other_seed, other_step, 3, 2, 3, 1.0)
    assert not np.array_equal(first[0], second[0]) and not np.array_equal(first[1], second[1])


@pytest.mark.parametrize("seed, step, other_seed, other_step", [
    (7, 3, 7 + 2**32, 3), (7, 3, 7, 3 + 2**32), (7, 3, 3, 7), (2**64 - 1, 0, 2**32 - 1, 0)])
def test_seeds_and_steps_that_share_their_low_words_give_different_batches(seed, step, other_seed, other_step):
    first, second = philox_task_batch(seed, step, 2, 2, 3, 1.0), philox_task_batch(other_seed, other_step, 2, 2, 3, 1.0)
    assert not np.array_equal(first[1], second[1])


# --- the gradient on a batch of the stream ----------------------------------------------------------


@pytest.mark.parametrize("model", [dict(n_layers=1), dict(n_layers=3, n_heads=2, include_query=True)])
def test_the_gradient_equals_the_oracle_on_the_same_draws(model):
    d, n_context, batch_size, a, seed, step = 5, 7, 97, 0.8, 2**35 + 1, 12
    cfg = iclgd.LSAConfig(d=d, **model)
    params = random_params(cfg, 4, 0.4)
    w, x = philox_task_batch(seed, step, batch_size, n_context, d, a, "float64")
    batch = encode(Examples(x, np.einsum("btd,bd->bt", x, w), w), "float64")  # as task.sample builds tokens
    truth_loss, truth_grads = iclgd.get_backend("numpy").loss_and_grad(cfg, params, batch)
    loss, grads = philox_sampled_grad(cfg, params, seed, step, batch_size, n_context, a)
    assert abs(loss - truth_loss) <= 1e-9 * max(1.0, truth_loss)
    assert grads.keys() == truth_grads.keys() and relative_error(grads, truth_grads) <= 1e-9


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["float32", "float64"]), st.integers(1, 5), st.integers(1, 3), st.booleans(), st.booleans(),
       st.integers(1, 6), st.integers(1, 8), st.integers(1, 200), stream_ints, stream_ints, st.integers(0, 2**20))
def test_the_kernels_own_draws_give_the_gradient_of_the_stored_batch_bit_for_bit(dtype, n_layers, n_heads, tied,
                                                                                   include_query, d, n_context,
                                                                                   batch_size, seed, step, params_seed):
    """philox_sampled_grad draws inside the lane kernel; the same batch stored (philox_task_batch),
    made tokens (tokens_and_targets) and run through the kernel on tokens gives the same bits."""
    cfg = iclgd.LSAConfig(d=d, n_layers=n_layers, n_heads=n_heads, tied=tied, include_query=include_query, dtype=dtype)
    params = module_of(cfg).check_params(cfg, random_params(cfg, params_seed, 0.15))  # finite through 5 layers
    w, x = philox_task_batch(seed, step, batch_size, n_context, d, 0.7, dtype)
    tokens, targets = numba_philox.tokens_and_targets(w, x)
    stored_loss, stored_grads = loss_and_grad_on_tokens(cfg, params, tokens, targets)
    loss, grads = philox_sampled_grad(cfg, params, seed, step, batch_size, n_context, 0.7)
    assert loss == stored_loss and math.isfinite(loss)
    assert all(grads[name].dtype == np.dtype(dtype) and np.array_equal(grads[name], stored_grads[name]) for name in grads)


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"), (dict(step=-2), "step"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size=2**32), "batch_size"), (dict(n_context=0), "n_context"), (dict(d=0), "d"),
    (dict(x_scale=0.0), "x_scale"), (dict(x_scale=float("nan")), "x_scale"), (dict(dtype="int8"), "dtype")])
def test_bad_batch_arguments_are_refused_naming_the_argument(kwargs, message):
    arguments = dict(seed=0, step=0, batch_size=2, n_context=2, d=2, x_scale=1.0, dtype="float64") | kwargs
    with pytest.raises(ValueError, match=message):
        philox_task_batch(**arguments)


def test_bad_gradient_arguments_are_refused_naming_the_argument():
    cfg = iclgd.LSAConfig(d=3, n_context=4)
    params = random_params(cfg, 0, 0.1)
    with pytest.raises(ValueError, match="n_context"):
        philox_sampled_grad(cfg, params, 0, 0, 8, 5, 1.0)
    with pytest.raises(ValueError, match="LSAConfig"):
        philox_sampled_grad(object(), params, 0, 0, 8, 4, 1.0)
    with pytest.raises(ValueError, match="w_q"):
        philox_sampled_grad(cfg, {k: v for k, v in params.items() if not k.endswith("w_q")}, 0, 0, 8, 4, 1.0)


def test_the_gradient_function_refuses_params_that_are_not_arrays_in_the_configs_dtype():
    cfg = iclgd.LSAConfig(d=3, dtype="float32")
    params = random_params(cfg, 0, 0.1)  # float64 arrays
    with pytest.raises(ValueError, match="cfg.dtype = float32"):
        numba_philox.philox_gradient(cfg, params, 0, 8, 4, 1.0)
    as_lists = {name: value.astype(np.float32).tolist() for name, value in params.items()}
    with pytest.raises(ValueError, match="NumPy arrays"):
        numba_philox.philox_gradient(cfg, as_lists, 0, 8, 4, 1.0)


def test_a_context_too_long_for_the_kernels_scratch_is_refused_naming_n_context():
    cfg = iclgd.LSAConfig(d=3)
    params = module_of(cfg).check_params(cfg, random_params(cfg, 0, 0.1))
    with pytest.raises(ValueError, match="n_context = 200000000"):
        philox_sampled_grad(cfg, params, 0, 0, 8, 200_000_000, 1.0)
    with pytest.raises(ValueError, match="n_context = 200000000"):
        philox_task_batch(0, 0, 1, 200_000_000, 3, 1.0)


@pytest.mark.parametrize("counters, keys, message", [
    (np.zeros((1, 3), np.uint32), np.zeros((1, 2), np.uint32), "counters"),
    (np.zeros((1, 4), np.uint32), np.zeros((2, 2), np.uint32), "as many rows"),
    (np.zeros((1, 4), np.int64), np.full((1, 2), 2**32, np.int64), "keys"),
    (np.zeros((1, 4)), np.zeros((1, 2), np.uint32), "counters")])
def test_bad_blocks_are_refused(counters, keys, message):
    with pytest.raises(ValueError, match=message):
        philox4x32_10(counters, keys)


def test_a_float32_batch_gives_the_oracles_gradient_on_its_own_draws_to_float32_precision():
    d, n_context, batch_size, a, seed, step = 4, 6, 130, 1.0, 3, 9
    cfg = iclgd.LSAConfig(d=d, n_layers=2, dtype="float32")
    params = random_params(cfg, 1, 0.3)
    w, x = philox_task_batch(seed, step, batch_size, n_context, d, a, "float32")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    batch = encode(Examples(x64, np.einsum("btd,bd->bt", x64, w64), w64), "float64")
    params64 = {name: value.astype(np.float64) for name, value in params.items()}
    truth_loss, truth_grads = iclgd.get_backend("numpy").loss_and_grad(dataclasses.replace(cfg, dtype="float64"), params64, batch)
    loss, grads = philox_sampled_grad(cfg, params, seed, step, batch_size, n_context, a)
    assert abs(loss - truth_loss) <= 1e-4 * max(1.0, truth_loss)
    assert relative_error(grads, truth_grads) <= 1e-4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tokens_hold_the_inputs_and_labels_summed_in_float64_and_rounded_once(dtype):
    w, x = philox_task_batch(11, 4, 37, 6, 3, 0.7, dtype)
    tokens, targets = numba_philox.tokens_and_targets(w, x)
    labels = np.array([[sum(float(x[b, row, k]) * float(w[b, k]) for k in range(3))
                        for row in range(7)] for b in range(37)]).astype(dtype)  # left to right, in float64
    assert tokens.dtype == targets.dtype == np.dtype(dtype) and tokens.shape == (37, 7, 4)
    np.testing.assert_array_equal(tokens[:, :, :3], x)
    np.testing.assert_array_equal(tokens[:, :-1, 3], labels[:, :-1])
    np.testing.assert_array_equal(tokens[:, -1, 3], 0.0)
    np.testing.assert_array_equal(targets, labels[:, -1])
