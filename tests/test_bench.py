"""The benchmark harness measures every installed backend and checks it against the oracle."""
import json

import pytest

from iclgd import bench


def test_bench_reports_every_operation_with_timings_and_oracle_deviation(tmp_path):
    backends = [b for b in bench.installed_backends() if b != "jax"]  # jax compiles slowly; its own tests cover it
    results = bench.run(backends, layers=(1, 2), dtypes=("float64",), batch_size=32, repeats=2, warmup=1, block=2)
    rows = results["rows"]
    assert {(r["backend"], r["n_layers"], r["operation"]) for r in rows} == {
        (b, layers, op) for b in backends for layers in (1, 2) for op in bench.OPERATIONS
    }
    for row in rows:
        assert row["ms"] > 0 and row["naive_gflops_per_s"] > 0
        assert row["max_rel_deviation_from_oracle"] <= 1e-9
    json_path, md_path = bench.write(results, tmp_path)
    assert json.loads(json_path.read_text())["rows"] == rows
    assert "| backend | layers | dtype | operation | ms |" in md_path.read_text()


def test_naive_flop_count_of_a_one_layer_step_is_designs_77_mflop():
    from iclgd.models import LSAConfig

    forward, backward = bench.naive_flops(LSAConfig(d=10), batch_size=2048, n_context=10)
    assert (forward + backward) / 1e6 == pytest.approx(77, abs=0.5)  # DESIGN.md: "~77 MFLOP at B=2048, N=d=10"
    assert backward > forward


def test_every_layer_after_the_first_also_pays_for_its_input_gradient():
    from iclgd.models import LSAConfig

    one = bench.naive_flops(LSAConfig(d=10), batch_size=2048, n_context=10)
    two = bench.naive_flops(LSAConfig(d=10, n_layers=2), batch_size=2048, n_context=10)
    assert two[0] == 2 * one[0] and two[1] > 2 * one[1]
