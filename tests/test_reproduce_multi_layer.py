"""`iclgd reproduce multi-layer`, run quick: the files it promises, their numbers, and the pieces
of its evaluation on models whose answers are known."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_batch, seeds

import iclgd
from iclgd import baselines, runio
from iclgd.cli import main
from iclgd.experiments import multi_layer
from iclgd.gd_models import LearnedGDConfig

numpy_backend = iclgd.get_backend("numpy")
FILES = ["results.json", "report.md", "loss_by_depth.png", "loss_by_layer.png", "alignment_by_depth.png"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi-layer")
    code = main(["reproduce", "multi-layer", "--quick", "--tied", "--out", str(out), "--quiet", "--backend", "numpy"])
    return code, out, json.loads((out / "results.json").read_text())


def test_quick_run_writes_every_file_and_one_resumable_run_per_model_and_depth(quick_run):
    code, out, results = quick_run
    for name in FILES:
        assert (out / name).is_file(), name
    for k in (1, 2):
        for model in multi_layer.MODELS:
            assert (out / f"K{k}" / model / "config.toml").is_file()
            assert runio.list_checkpoints(out / f"K{k}" / model)


def test_exit_code_is_1_exactly_when_a_claim_fails(quick_run):
    code, _, results = quick_run
    assert code == (0 if all(row[3] for row in multi_layer.comparison_rows(results)) else 1)


def test_the_tied_run_states_the_recurrent_claim_against_gdpp(quick_run):
    _, _, results = quick_run
    assert any("within 5% of trained GD++" in row[0] for row in multi_layer.comparison_rows(results))


def test_every_loss_and_alignment_number_has_a_standard_error(quick_run):
    _, _, results = quick_run
    for row in results["depths"]:
        entries = list(row["loss"].values()) + list(row["paired"].values())
        entries += [m for other in row["alignment"].values() for m in other.values()]
        entries += [e for per_layer in row["loss_per_layer"].values() for e in per_layer]
        for entry in entries:
            assert set(entry) == {"mean", "stderr"} and entry["stderr"] > 0


def test_the_last_layer_read_out_is_the_reported_loss(quick_run):
    _, _, results = quick_run
    for row in results["depths"]:
        for name, per_layer in row["loss_per_layer"].items():
            assert len(per_layer) == row["n_layers"]
            assert per_layer[-1]["mean"] == pytest.approx(row["loss"][name]["mean"], rel=1e-12)


def test_rerunning_a_finished_run_trains_nothing_and_reports_the_same_numbers(quick_run):
    first_code, out, results = quick_run
    code = main(["reproduce", "multi-layer", "--quick", "--tied", "--out", str(out), "--quiet", "--backend", "numpy"])
    again = json.loads((out / "results.json").read_text())
    assert again["depths"] == results["depths"] and code == first_code


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 5), st.integers(2, 8), st.integers(1, 4), st.floats(0.1, 1.0), seeds)
def test_reading_out_after_layer_l_of_the_gd_construction_gives_l_gd_steps(d, n_context, n_layers, eta, seed):
    cfg = LearnedGDConfig(d=d, n_context=n_context, n_layers=n_layers, tied=True)
    batch = random_batch(d, n_context, 4, seed)
    readouts = multi_layer.layer_readouts(numpy_backend, cfg, {"eta": np.array([eta])}, batch.tokens)
    for steps, readout in enumerate(readouts, start=1):
        np.testing.assert_allclose(readout, baselines.gd_predict(batch.tokens, eta, steps), rtol=1e-9, atol=1e-12)


def test_a_model_compared_with_itself_is_perfectly_aligned():
    cfg = LearnedGDConfig(d=3, n_context=5, n_layers=2, tied=True, variant="gdpp")
    params = {"eta": np.array([0.8]), "gamma": np.array([0.3])}
    gd_cfg = LearnedGDConfig(d=3, n_context=5, n_layers=2, tied=True)
    trained = {"lsa": (cfg, params), "gd": (gd_cfg, {"eta": np.array([0.8])}), "gdpp": (cfg, params)}
    row = multi_layer.evaluate_depth(numpy_backend, 2, trained, 0.8, random_batch(3, 5, 50, 0))
    assert row["paired"]["lsa_minus_gdpp"]["mean"] == 0.0
    assert row["alignment"]["gdpp"]["preds_diff"]["mean"] == 0.0
    assert row["alignment"]["gdpp"]["model_cos"]["mean"] == pytest.approx(1.0)
    # learned GD with the tuned rate is tuned GD
    assert row["loss"]["gd"]["mean"] == pytest.approx(row["loss"]["tuned_gd"]["mean"], rel=1e-12)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "1,x"], "--layers must be comma-separated positive integers"),
        (["--layers", "0"], "layers must be a positive integer"),
        (["--layers", "2,2"], "layers must not repeat a depth"),
        (["--val-tasks", "1"], "val_tasks must be >= 2"),
        (["--backend", "torch"], "backend must be one of"),
        (["--steps-per-layer", "-1"], "steps_per_layer must be a non-negative integer"),
    ],
)
def test_bad_multi_layer_arguments_exit_2_with_a_message(args, message, capsys, tmp_path):
    assert main(["reproduce", "multi-layer", "--quick", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
