"""The benchmark harness measures every installed backend and checks it against the oracle."""
import json

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


def test_naive_flop_count_of_the_papers_one_layer_step():
    from iclgd.models import LSAConfig

    forward = bench.naive_forward_flops(LSAConfig(d=10), batch_size=2048, n_context=10)
    assert forward == 2 * 2048 * (11 * 11 * 11 * 2 + 10 * 11 * 11 * 2 + 11 * 10 * 11 * 2)
