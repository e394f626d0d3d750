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
from iclgd.config import run_config_to_toml
from iclgd.evaluate import validation_batch
from iclgd.gd_models import LearnedGDConfig, as_lsa
from iclgd.metrics import half_squared_errors
from iclgd.train import latest_checkpoint

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


def test_the_quick_runs_exit_code_is_1_exactly_when_a_smoke_check_fails(quick_run):
    code, _, results = quick_run
    assert code == (0 if all(row[3] for row in multi_layer.smoke_rows(results)) else 1)


def test_a_full_runs_exit_code_is_1_exactly_when_a_claim_fails(quick_run):
    _, _, results = quick_run
    full = json.loads(json.dumps(results))
    full["setting"]["smoke"] = False
    assert multi_layer.exit_code(full) == (0 if all(row[3] for row in multi_layer.comparison_rows(full)) else 1)


def test_the_tied_run_states_the_recurrent_claim_against_tuned_gdpp(quick_run):
    _, _, results = quick_run
    assert any(row[0].endswith("within 5% of tuned GD++") for row in multi_layer.comparison_rows(results))


def test_tuned_gdpp_is_no_worse_than_tuned_gd_on_the_validation_tasks(quick_run):
    """GD++ with gamma = 0 is GD, so its direct search cannot end above tuned GD (up to the
    difference between the training tasks it was tuned on and the validation tasks)."""
    _, _, results = quick_run
    for row in results["depths"]:
        assert row["loss"]["tuned_gdpp"]["mean"] <= row["loss"]["tuned_gd"]["mean"] * 1.01


def test_every_loss_and_alignment_number_has_a_standard_error(quick_run):
    _, _, results = quick_run
    for row in results["depths"]:
        entries = list(row["loss"].values()) + list(row["paired"].values())
        entries += [m for other in row["alignment"].values() for m in other.values()]
        entries += [e for per_layer in row["loss_per_layer"].values() for e in per_layer]
        for entry in entries:
            assert set(entry) == {"mean", "stderr"} and entry["stderr"] > 0


def test_the_reported_loss_is_the_trained_models_prediction_loss_on_the_validation_tasks(quick_run):
    _, out, results = quick_run
    setting = multi_layer.MultiLayerSetting.quick(tied=True, backend="numpy")
    batch = validation_batch(setting.task, setting.val_tasks, setting.seed)
    for row in results["depths"]:
        for model in multi_layer.MODELS:
            config = setting.run_config(row["n_layers"], model)
            params = latest_checkpoint(out / f"K{row['n_layers']}" / model, "float64")[0].params
            prediction = numpy_backend.predict(*as_lsa(config.model, params), batch.tokens)
            loss = np.mean(half_squared_errors(prediction, batch.targets))
            assert row["loss"][model]["mean"] == pytest.approx(loss, rel=1e-9)
            assert len(row["loss_per_layer"][model]) == row["n_layers"]


def test_rerunning_a_finished_run_trains_nothing_and_reports_the_same_numbers(quick_run):
    first_code, out, results = quick_run
    checkpoints = {path: path.stat().st_mtime_ns for path in out.glob("K*/*/checkpoints/*.npz")}
    code = main(["reproduce", "multi-layer", "--quick", "--tied", "--out", str(out), "--quiet", "--backend", "numpy"])
    again = json.loads((out / "results.json").read_text())
    assert again["depths"] == results["depths"] and code == first_code
    assert {path: path.stat().st_mtime_ns for path in out.glob("K*/*/checkpoints/*.npz")} == checkpoints


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 5), st.integers(2, 8), st.integers(1, 4), st.floats(0.1, 1.0), seeds)
def test_reading_out_after_layer_l_of_the_gd_construction_gives_l_gd_steps(d, n_context, n_layers, eta, seed):
    cfg = LearnedGDConfig(d=d, n_context=n_context, n_layers=n_layers, tied=True)
    batch = random_batch(d, n_context, 4, seed)
    readouts = multi_layer.layer_readouts(numpy_backend, cfg, {"eta": np.array([eta])}, batch.tokens)
    for steps, readout in enumerate(readouts, start=1):
        np.testing.assert_allclose(readout, baselines.gd_predict(batch.tokens, eta, steps), rtol=1e-9, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(2, 6), st.integers(1, 4), seeds)
def test_reading_out_after_layer_l_of_untied_gdpp_gives_its_first_l_steps(d, n_context, n_layers, seed):
    cfg = LearnedGDConfig(d=d, n_context=n_context, n_layers=n_layers, variant="gdpp")
    rng = np.random.default_rng(seed)
    params = {"eta": rng.uniform(0.1, 1.0, n_layers), "gamma": rng.uniform(-0.5, 0.5, n_layers)}
    batch = random_batch(d, n_context, 4, seed)
    readouts = multi_layer.layer_readouts(numpy_backend, cfg, params, batch.tokens)
    for steps, readout in enumerate(readouts, start=1):
        expected = baselines.gdpp_predict(batch.tokens, params["eta"][:steps], params["gamma"][:steps], steps)
        np.testing.assert_allclose(readout, expected, rtol=1e-9, atol=1e-12)


def made_up_results(lsa, gdpp, tuned_gd=(0.80, 0.62, 0.52), tied=True, stderr=0.001):
    """Results with the given mean losses per depth K = 1, 2, ...: enough for comparison_rows."""
    depths = []
    for k, (a, g, t) in enumerate(zip(lsa, gdpp, tuned_gd), start=1):
        depths.append({
            "n_layers": k,
            "loss": {"lsa": {"mean": a, "stderr": stderr}, "gdpp": {"mean": g, "stderr": stderr},
                     "tuned_gd": {"mean": t, "stderr": 0.01}},
            "paired": {"lsa_minus_tuned_gd": {"mean": a - t, "stderr": stderr},
                       "lsa_minus_gdpp": {"mean": a - g, "stderr": stderr}},
        })
    return {"depths": depths, "setting": {"tied": tied}, "quoted_tuned_gd": {"2": 0.626}}


def test_claims_hold_for_an_lsa_on_gdpp_and_below_gd():
    rows = multi_layer.comparison_rows(made_up_results(lsa=(0.80, 0.44, 0.31), gdpp=(0.80, 0.44, 0.30)))
    assert [row[3] for row in rows] == [True, True, True, True]


def test_an_lsa_3_percent_worse_than_gd_at_one_depth_fails_the_no_worse_claim():
    rows = multi_layer.comparison_rows(made_up_results(lsa=(0.824, 0.44, 0.31), gdpp=(0.80, 0.44, 0.31)))
    assert [row[3] for row in rows] == [True, False, True, True]


def test_a_recurrent_lsa_6_percent_above_gdpp_fails_the_gdpp_claim():
    rows = multi_layer.comparison_rows(made_up_results(lsa=(0.80, 0.44, 0.3286), gdpp=(0.80, 0.44, 0.31)))
    assert rows[-1][0].endswith("within 5% of learned-rate GD++") and rows[-1][3] is False


def test_the_recurrent_claim_is_judged_against_tuned_gdpp_when_it_was_measured():
    results = made_up_results(lsa=(0.80, 0.44, 0.3286), gdpp=(0.80, 0.44, 0.3286))
    for row in results["depths"]:  # learned GD++ equals the LSA; tuned GD++ is 6 % lower
        tuned = row["loss"]["lsa"]["mean"] / 1.06
        row["loss"]["tuned_gdpp"] = {"mean": tuned, "stderr": 0.001}
        row["paired"]["lsa_minus_tuned_gdpp"] = {"mean": row["loss"]["lsa"]["mean"] - tuned, "stderr": 0.001}
    rows = multi_layer.comparison_rows(results)
    assert rows[-1][0].endswith("within 5% of tuned GD++") and rows[-1][3] is False


def test_a_single_depth_without_a_reference_value_makes_no_claim_about_gd_falling():
    rows = multi_layer.comparison_rows(made_up_results(lsa=(0.80,), gdpp=(0.80,), tuned_gd=(0.80,)))
    assert not any(row[0].startswith("tuned K-step GD falls") for row in rows)


def test_tuned_gd_off_its_reference_value_fails_the_first_claim():
    rows = multi_layer.comparison_rows(made_up_results(lsa=(0.80, 0.44), gdpp=(0.80, 0.44), tuned_gd=(0.80, 0.70)))
    assert rows[0][0].startswith("tuned K-step GD falls") and rows[0][3] is False


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
        (["--layers", "0"], "--layers must be a positive integer"),
        (["--layers", "2,2"], "--layers must not repeat a depth"),
        (["--val-tasks", "1"], "--val-tasks must be >= 2"),
        (["--backend", "torch"], "--backend must be one of"),
        (["--steps-per-layer", "-1"], "--steps-per-layer must be a non-negative integer"),
    ],
)
def test_bad_multi_layer_arguments_exit_2_with_a_message(args, message, capsys, tmp_path):
    assert main(["reproduce", "multi-layer", "--quick", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_conflicting_run_directory_at_a_later_depth_is_refused_before_anything_trains(tmp_path, capsys):
    other = multi_layer.MultiLayerSetting.quick(seed=1, backend="numpy").run_config(2, "gd")
    (tmp_path / "K2" / "gd").mkdir(parents=True)
    (tmp_path / "K2" / "gd" / "config.toml").write_text(run_config_to_toml(other))
    assert main(["reproduce", "multi-layer", "--quick", "--out", str(tmp_path), "--backend", "numpy", "--quiet"]) == 2
    assert "holds a run with a different configuration" in capsys.readouterr().err
    assert not (tmp_path / "K1").exists()
