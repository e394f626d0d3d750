"""The benchmark harness measures every installed backend, checks it against the oracle, sets it
against the machine's floor, and can repeat it under load.  No test asserts a speed."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iclgd import bench
from iclgd.models import LSAConfig
from iclgd.tasks import LinearRegressionTask

SMALL = dict(dtypes=("float64",), batch_size=32, repeats=2, warmup=1, block=2, matmul_size=32, n_draws=1000)


def test_bench_reports_every_operation_with_timings_oracle_deviation_and_floor(tmp_path):
    backends = [b for b in bench.installed_backends() if b != "jax"]  # jax compiles slowly; its own tests cover it
    results = bench.run(backends, layers=(1, 2), **SMALL)
    rows = results["rows"]
    assert {(r["backend"], r["n_layers"], r["operation"]) for r in rows} == {
        (b, layers, op) for b in backends for layers in (1, 2)
        for op in bench.OPERATIONS + ((bench.PHILOX_STEP,) if b == "numba" else ())
    }
    for row in rows:
        assert row["ms"] > 0 and row["naive_gflops_per_s"] > 0 and row["floor_ms"] > 0
        assert row["max_rel_deviation_from_oracle"] <= 1e-9
        assert row["ms_over_floor"] == pytest.approx(row["ms"] / row["floor_ms"])
    json_path, md_path = bench.write(results, tmp_path)
    assert json.loads(json_path.read_text())["rows"] == rows
    assert "| backend | threads | layers | dtype | operation | ms | floor ms | ms / floor |" in md_path.read_text()


def test_each_rows_floor_is_its_work_at_the_runs_calibrated_rates():
    results = bench.run(["numpy"], layers=(2,), **SMALL)
    calibration = bench.Calibration(**results["calibration"]["quiet"])
    for row in results["rows"]:
        config = bench.run_config(row["n_layers"], row["dtype"], row["backend"], row["batch_size"])
        flops, normals, uniforms = bench.row_work(row["operation"], config.model, config.task, row["batch_size"])
        assert row["floor_ms"] == pytest.approx(1e3 * bench.floor_seconds(flops, normals, uniforms, row["dtype"], calibration))
        assert row["draws"] == normals + uniforms


def test_numba_rows_can_be_timed_at_each_thread_count():
    pytest.importorskip("numba")
    results = bench.run(["numba"], layers=(1,), numba_threads=(1, 2), **SMALL)
    assert sorted({row["threads"] for row in results["rows"]}) == [1, 2]


def test_the_contended_pass_reports_both_loads_and_leaves_no_busy_process_running():
    results = bench.run(["numpy"], layers=(1,), contended=True, spinners=2, **SMALL)
    assert results["contention"]["processes"] == 2
    for row in results["rows"]:
        assert row["ms_contended"] > 0
        assert row["ms_contended_over_floor"] == pytest.approx(row["ms_contended"] / row["floor_ms"])
    for pid in results["contention"]["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "| ms quiet | ms contended |" in bench.markdown(results)


def test_busy_processes_are_stopped_when_the_timed_body_raises():
    with pytest.raises(RuntimeError, match="inside"):
        with bench.busy_cores(1) as pids:
            raise RuntimeError("inside")
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_busy_cores_refuse_zero_processes():
    with pytest.raises(ValueError, match="positive integer"):
        with bench.busy_cores(0):
            pass


# --- the floor's arithmetic -------------------------------------------------------------------------


FAKE = bench.Calibration(float32_flops_per_s=1e9, float64_flops_per_s=2e9, normals_per_s=1e6, uniforms_per_s=2e6)


def test_the_floor_is_flops_over_the_dtypes_rate_plus_draws_over_their_rates():
    assert bench.floor_seconds(2e9, 1e6, 2e6, "float32", FAKE) == pytest.approx(2 + 1 + 1)
    assert bench.floor_seconds(2e9, 1e6, 2e6, "float64", FAKE) == pytest.approx(1 + 1 + 1)


def test_a_calibration_refuses_a_rate_that_is_not_positive():
    with pytest.raises(ValueError, match="normals_per_s must be a positive finite rate"):
        bench.Calibration(1e9, 1e9, 0.0, 1e6)


def test_the_calibration_measures_positive_rates():
    calibration = bench.calibrate(matmul_size=16, n_draws=100, repeats=1)
    assert min(calibration.flops_per_s("float32"), calibration.flops_per_s("float64"),
               calibration.normals_per_s, calibration.uniforms_per_s) > 0


def test_a_training_step_draws_b_times_d_plus_n_plus_one_times_d_numbers():
    normals, uniforms = bench.step_draws(LinearRegressionTask(d=10, n_context=10), 2048)
    assert (normals, uniforms) == (2048 * 10, 2048 * 11 * 10)


def test_only_the_training_step_draws_and_builds_labels():
    cfg, task = LSAConfig(d=10, n_context=10), LinearRegressionTask(d=10, n_context=10)
    forward, backward = bench.reassociated_flops(cfg, 2048, 10)
    assert bench.row_work("forward", cfg, task, 2048) == (forward, 0, 0)
    assert bench.row_work("forward+backward", cfg, task, 2048) == (forward + backward, 0, 0)
    assert bench.row_work("train step", cfg, task, 2048) == (forward + backward + 2 * 2048 * 11 * 10, 2048 * 10, 2048 * 110)


# --- FLOP counts ----------------------------------------------------------------------------------


def test_naive_flop_count_of_a_one_layer_step_is_designs_77_mflop():
    forward, backward = bench.naive_flops(LSAConfig(d=10), batch_size=2048, n_context=10)
    assert (forward + backward) / 1e6 == pytest.approx(77, abs=0.5)  # DESIGN.md: "~77 MFLOP at B=2048, N=d=10"
    assert backward > forward


def test_every_layer_after_the_first_also_pays_for_its_input_gradient():
    one = bench.naive_flops(LSAConfig(d=10), batch_size=2048, n_context=10)
    two = bench.naive_flops(LSAConfig(d=10, n_layers=2), batch_size=2048, n_context=10)
    assert two[0] == 2 * one[0] and two[1] > 2 * one[1]


def test_reassociated_count_of_two_layers_at_d_1_n_1_matches_a_hand_count():
    # D = 2, H = 1, K = 2 untied (S = 2), N_k = 1, k = v = 2, B = 1; multiply-adds:
    forward_task = (1 * 2 * 3 // 2          # G_0 = C^T C, one triangle: N_k D (D + 1) / 2 = 3
                    + 2 * 8 + 2 * 8 + 4      # layer 0: M (P G R: 2 D^3), G_1 = M^T G M (2 D^3), a_1 = a M (D^2)
                    + 2 * 4 + 2)             # query row of layer 1: u = a P, s = u G (2 D^2), yhat (D)
    forward_step = 2 * (8 + 8)               # P = W_q W_k^T and R = W_v W_o for 2 layers: D^2 k + D^2 v each
    backward_task = (2 * 2 + 4 + 4 + 2 * 4   # last layer: dR column, sbar (2 D); ubar = G sbar; dP; Gbar, abar (2 D^2)
                     + 2 * 8 + 4 + 4 + 2 * 8  # layer 0: Mbar (2 D^3 + D^2), abar (D^2), M Gbar M^T (2 D^3)
                     + 3 * 2 * 8)             # P^T Mbar R^T, dP, dR (2 D^3 each)
    backward_step = 2 * (2 * 8 + 2 * 8)       # dW_q, dW_k, dW_v, dW_o for 2 layers
    assert (forward_task, forward_step, backward_task, backward_step) == (49, 32, 108, 64)
    assert bench.reassociated_flops(LSAConfig(d=1, n_layers=2), batch_size=1, n_context=1) == (
        2.0 * (forward_task + forward_step), 2.0 * (backward_task + backward_step))


def test_a_one_layer_task_costs_715_multiply_adds_at_the_papers_size():
    forward, backward = bench.reassociated_flops(LSAConfig(d=10), batch_size=2048, n_context=10)
    per_step = 6 * 11**3  # P, R and the four weight gradients
    assert forward + backward == 2.0 * (2048 * (352 + 363) + per_step)
    assert forward + backward < sum(bench.naive_flops(LSAConfig(d=10), 2048, 10)) / 20  # ~2.9 against ~77 MFLOP


@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 6), st.integers(1, 8), st.booleans(), st.booleans(),
       st.integers(1, 64))
def test_reassociated_count_is_affine_in_the_batch_size(d, n_heads, n_layers, n_context, tied, include_query, batch):
    cfg = LSAConfig(d=d, n_heads=n_heads, n_layers=n_layers, tied=tied, include_query=include_query)
    one, two, three = (bench.reassociated_flops(cfg, b, n_context) for b in (batch, 2 * batch, 3 * batch))
    for part in (0, 1):
        assert three[part] - two[part] == two[part] - one[part] > 0


def test_reassociated_count_refuses_a_batch_size_of_zero():
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        bench.reassociated_flops(LSAConfig(d=2), batch_size=0, n_context=3)


# --- the authors' formulation (benchmarks/authors_step.py) ---------------------------------------------


def load_authors_step(monkeypatch):
    """The script as a module (registered for the test only: its dataclass needs a module to resolve in)."""
    path = Path(__file__).parent.parent / "benchmarks" / "authors_step.py"
    spec = importlib.util.spec_from_file_location("authors_step", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # compiles the authors' jax step for every case (~15 s)
@pytest.mark.parametrize("n_layers, n_heads", [(1, 1), (3, 2)])
def test_the_authors_formulation_computes_the_oracles_model(n_layers, n_heads, monkeypatch):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    authors = load_authors_step(monkeypatch)
    setting = authors.AuthorsSetting(n_layers=n_layers, n_heads=n_heads, batch_size=16)
    assert authors.deviation_from_oracle(setting) < 1e-5  # float32 against the float64 oracle


def test_a_thread_count_of_zero_is_refused_before_anything_is_timed():
    with pytest.raises(ValueError, match="numba_threads must be positive integers"):
        bench.run(["numpy"], layers=(1,), numba_threads=(0,), **SMALL)
