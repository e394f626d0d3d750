"""The numba backend is held to the NumPy oracle: its fused sampler (and the PCG64 draws its
kernel makes itself), batches of several lane blocks per chunk, thread-count independence,
training runs and resumes across backends, and the FLOP count it reports.  Forward, loss,
gradient and sensitivity parity (golden states and drawn configs, float64 and float32, deep
and wide models) live in tests/test_parity.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parity import check_all
from strategies import lsa_configs, random_batch, random_params, seeds

pytest.importorskip("numba", reason="the numba backend needs the numba extra: pip install 'iclgd[numba]'")

import iclgd  # noqa: E402
from iclgd.backends import numba_backend, numba_lanes  # noqa: E402
from iclgd.backends.training import batch_rng  # noqa: E402
from iclgd.checks import relative_error  # noqa: E402
from iclgd.config import run_config_from_dict  # noqa: E402
from iclgd.train import train  # noqa: E402

oracle = iclgd.get_backend("numpy")
numba = iclgd.get_backend("numba")


@settings(max_examples=20, deadline=None)
@given(lsa_configs(max_layers=2), seeds, st.integers(1, 40))
def test_fused_sampling_draws_the_tasks_of_task_sample(drawn, seed, batch_size):
    cfg, n_context = drawn
    params = random_params(cfg, seed, 0.4)
    task = iclgd.LinearRegressionTask(d=cfg.d, n_context=n_context, x_scale=0.7, w_scale=1.3)
    fused = numba.sample_loss_and_grad(cfg, task, params, batch_size, batch_rng(seed, 3))
    plain = oracle.loss_and_grad(cfg, params, task.sample(batch_size, batch_rng(seed, 3)))
    assert abs(fused[0] - plain[0]) <= 1e-9 * max(1.0, plain[0])
    assert relative_error(fused[1], plain[1]) <= 1e-9


#: a batch whose chunks hold two lane blocks each, the second one part padding
SEVERAL_BLOCKS = numba_lanes.N_CHUNKS * numba_lanes.LANES + 3 * numba_lanes.N_CHUNKS + 5


@settings(max_examples=25, deadline=None)
@given(seeds, st.integers(0, 30), st.integers(0, 5000), st.floats(1e-3, 1e3))
def test_the_kernels_pcg64_draws_are_numpys_uniform_bit_for_bit(seed, n_before, first, a):
    """From any state and after any jump, the kernel's draws are ``rng.uniform(-a, a)``'s
    numbers exactly (two roundings in low + span U, never one fused multiply-add)."""
    rng, reference = np.random.default_rng(seed), np.random.default_rng(seed)
    rng.standard_normal(n_before), reference.standard_normal(n_before)
    stream = numba_backend._pcg64_stream(rng, first + 300)
    expected = reference.uniform(-a, a, first + 300)[first:]
    got = np.empty(300)
    numba_lanes.pcg64_uniform_fill(stream, first, -a, a - (-a), got)
    assert np.array_equal(got, expected)
    assert rng.random() == reference.random()  # rng was advanced past the draws


def test_a_fused_step_leaves_the_generator_where_task_sample_leaves_it():
    cfg = iclgd.LSAConfig(d=3, n_layers=2)
    task = iclgd.LinearRegressionTask(d=3, n_context=4, x_scale=0.7)
    fused, plain = batch_rng(5, 2), batch_rng(5, 2)
    numba.sample_loss_and_grad(cfg, task, random_params(cfg, 0, 0.4), 50, fused)
    task.sample(50, plain)
    assert fused.bit_generator.state == plain.bit_generator.state


@pytest.mark.parametrize("law, generator", [("gaussian", "pcg64"), ("uniform", "philox"), ("laplace", "philox")])
def test_fused_sampling_draws_task_samples_tasks_for_other_laws_and_generators(law, generator):
    """Inputs of another law, or another bit generator: drawn on the host (task.draw_weights_and_inputs)."""
    cfg = iclgd.LSAConfig(d=3, n_layers=2, n_heads=2)
    params = random_params(cfg, 1, 0.4)
    task = iclgd.LinearRegressionTask(d=3, n_context=5, x_scale=0.6, x_distribution=law)
    make = {"pcg64": np.random.PCG64, "philox": np.random.Philox}[generator]
    fused = numba.sample_loss_and_grad(cfg, task, params, 70, np.random.Generator(make(11)))
    plain = oracle.loss_and_grad(cfg, params, task.sample(70, np.random.Generator(make(11))))
    assert abs(fused[0] - plain[0]) <= 1e-9 * max(1.0, plain[0])
    check_all({f"{key} gradient": (fused[1][key], plain[1][key]) for key in plain[1]}, rtol=1e-9)


@pytest.mark.parametrize("n_layers, n_heads, d", [(1, 1, 2), (3, 1, 4), (2, 2, 2)])
def test_a_fused_step_over_several_lane_blocks_per_chunk_agrees_with_the_oracle(n_layers, n_heads, d):
    """Every chunk runs two lane blocks, the draws of the second continuing the first's stream."""
    cfg = iclgd.LSAConfig(d=d, n_layers=n_layers, n_heads=n_heads, tied=n_layers > 2)
    params = random_params(cfg, 2, 0.4)
    task = iclgd.LinearRegressionTask(d=d, n_context=3, x_scale=0.9)
    fused = numba.sample_loss_and_grad(cfg, task, params, SEVERAL_BLOCKS, batch_rng(4, 7))
    plain = oracle.loss_and_grad(cfg, params, task.sample(SEVERAL_BLOCKS, batch_rng(4, 7)))
    assert abs(fused[0] - plain[0]) <= 1e-9 * max(1.0, plain[0])
    check_all({f"{key} gradient": (fused[1][key], plain[1][key]) for key in plain[1]}, rtol=1e-9)


def test_every_output_over_several_lane_blocks_per_chunk_agrees_with_the_oracle():
    cfg = iclgd.LSAConfig(d=2, n_layers=3, n_heads=2, include_query=True)
    params = random_params(cfg, 3, 0.4)
    batch = random_batch(2, 3, SEVERAL_BLOCKS, 5)
    got, expected = (be.loss_and_grad(cfg, params, batch) for be in (numba, oracle))
    results = {f"{key} gradient": (got[1][key], expected[1][key]) for key in expected[1]}
    results["loss"] = (got[0], expected[0])
    results["predictions"] = (numba.predict(cfg, params, batch.tokens), oracle.predict(cfg, params, batch.tokens))
    results["sensitivity"] = (numba.sensitivity(cfg, params, batch.tokens), oracle.sensitivity(cfg, params, batch.tokens))
    for index, (ours, truth) in enumerate(zip(numba.forward(cfg, params, batch.tokens), oracle.forward(cfg, params, batch.tokens))):
        results[f"layer {index} tokens"] = (ours, truth)
    check_all(results, rtol=1e-9)


def test_results_do_not_depend_on_the_number_of_threads():
    cfg = iclgd.LSAConfig(d=5, n_layers=2, n_heads=2)
    params = random_params(cfg, 0, 0.4)
    batch = random_batch(5, 7, 100, 0)
    before = numba_backend.numba.get_num_threads()
    try:
        numba_backend.set_threads(1)
        one = numba.loss_and_grad(cfg, params, batch)
        numba_backend.set_threads(before)
        many = numba.loss_and_grad(cfg, params, batch)
    finally:
        numba_backend.set_threads(before)
    assert one[0] == many[0]
    assert all(np.array_equal(one[1][k], many[1][k]) for k in one[1])


@pytest.mark.parametrize("model", [{"n_layers": 1}, {"n_layers": 2, "n_heads": 2, "tied": True}])
def test_fifty_training_steps_end_where_the_oracle_ends(tmp_path, model):
    def config(backend):
        return run_config_from_dict({"task": {"d": 4, "n_context": 6}, "model": model,
                                     "train": {"steps": 50, "batch_size": 64, "lr": 0.01, "seed": 7,
                                               "checkpoint_every": 25, "backend": backend, "init_scale": 0.5}})
    ours = train(tmp_path / "numba", config("numba"))
    truth = train(tmp_path / "numpy", config("numpy"))
    assert relative_error(ours.params, truth.params) <= 1e-8


def test_a_numpy_run_resumes_on_numba_and_vice_versa(tmp_path):
    def config(backend, steps):
        return run_config_from_dict({"task": {"d": 3, "n_context": 5}, "train": {
            "steps": steps, "batch_size": 32, "lr": 0.01, "checkpoint_every": 10, "backend": backend, "init_scale": 0.5}})
    truth = train(tmp_path / "numpy", config("numpy", 40))
    for first, second in (("numpy", "numba"), ("numba", "numpy")):
        run = tmp_path / f"{first}-{second}"
        train(run, config(first, 40))
        for step, path in iclgd.runio.list_checkpoints(run):
            if step > 20:
                path.unlink()
        resumed = train(run, config(second, 40))
        assert resumed.step == 40
        assert relative_error(resumed.params, truth.params) <= 1e-8


def test_results_over_several_lane_blocks_do_not_depend_on_the_number_of_threads():
    cfg = iclgd.LSAConfig(d=2, n_layers=3, tied=True, dtype="float32")
    task = iclgd.LinearRegressionTask(d=2, n_context=3)
    params = iclgd.init_params(cfg, seed=0, scale=0.4)
    before = numba_backend.numba.get_num_threads()
    try:
        numba_backend.set_threads(1)
        one = numba.sample_loss_and_grad(cfg, task, params, SEVERAL_BLOCKS, batch_rng(0, 0))
        numba_backend.set_threads(before)
        many = numba.sample_loss_and_grad(cfg, task, params, SEVERAL_BLOCKS, batch_rng(0, 0))
    finally:
        numba_backend.set_threads(before)
    assert one[0] == many[0]
    assert all(np.array_equal(one[1][k], many[1][k]) for k in one[1])


def test_step_flops_counts_the_documented_kernel_at_d_equal_n_equal_10():
    """2.6 kFLOP a task for one layer, 42.0 kFLOP for three (numba_backend's docstring)."""
    assert numba_backend.step_flops(1, 1, 10, 10, False) == 2 * (11 * 10 + 10 * 66 + 4 * 121 + 3 * 11)
    assert numba_backend.step_flops(3, 1, 10, 10, False) == 42020


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 12), st.integers(1, 12), st.booleans())
def test_step_flops_grows_with_depth_heads_and_context(n_layers, n_heads, d, n_context, include_query):
    flops = numba_backend.step_flops(n_layers, n_heads, d, n_context, include_query)
    assert flops > 0 and flops % 2 == 0
    assert numba_backend.step_flops(n_layers + 1, n_heads, d, n_context, include_query) > flops
    assert numba_backend.step_flops(n_layers, n_heads + 1, d, n_context, include_query) > flops
    assert numba_backend.step_flops(n_layers, n_heads, d, n_context + 1, include_query) > flops
    assert numba_backend.step_flops(n_layers, n_heads, d, n_context, True) >= flops


@pytest.mark.parametrize("bad", [{"n_layers": 0}, {"n_heads": 1.5}, {"d": -1}, {"n_context": "10"}, {"include_query": 1}])
def test_step_flops_refuses_bad_arguments(bad):
    arguments = {"n_layers": 2, "n_heads": 1, "d": 10, "n_context": 10, "include_query": False} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        numba_backend.step_flops(**arguments)
