"""The reference walkthroughs run, and the claims they print hold (quick mode); their settings are
the experiments' settings."""
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from iclgd.backends import fastest_backend
from iclgd.experiments.stages import StagesSetting
from iclgd.experiments.multi_layer import MultiLayerSetting
from iclgd.experiments.one_layer import OneLayerSetting
from iclgd.experiments.ood import OODSetting

REFERENCE = Path(__file__).resolve().parent.parent / "reference"


def recorded_files(name: str) -> dict:
    """reference/results/NAME.* with their modification times."""
    results_dir = REFERENCE / "results"
    return {p: p.stat().st_mtime_ns for p in results_dir.glob(f"{name}.*")} if results_dir.is_dir() else {}


def run_quick(name: str, out: Path, timeout: int = 300) -> tuple[str, dict]:
    """``python reference/NAME.py --quick --out OUT``: it exits 0 with every check passed, what it
    printed is what it wrote into OUT, and reference/results is left alone.  (stdout, results)."""
    recorded = recorded_files(name)
    completed = subprocess.run([sys.executable, str(REFERENCE / f"{name}.py"), "--quick", "--out", str(out)],
                               capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert completed.stdout.rstrip().endswith("all checks passed") and "[FAIL]" not in completed.stdout
    assert (out / f"{name}.txt").read_text(encoding="utf-8") == completed.stdout
    assert recorded_files(name) == recorded, "--quick must not write into reference/results"
    results = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert results["mode"] == "quick" and results["all_checks_passed"] is True
    assert results["checks"] and all(check["ok"] for check in results["checks"])
    return completed.stdout, results


def test_one_step_gd_walkthrough_quick(tmp_path):
    _, results = run_quick("01_one_step_gd", tmp_path)
    assert (tmp_path / "run" / "config.toml").is_file()

    # the claims, re-checked from the recorded numbers
    step1 = results["step1_construction"]
    assert step1["max_abs_weight_diff_vs_gd_construction"] == 0.0
    assert step1["max_abs_prediction_diff_vs_gd"] <= 1e-12
    assert step1["max_abs_sensitivity_diff_vs_gd_weight"] <= 1e-12
    assert step1["w0_max_abs_prediction_diff"] <= 1e-12
    step2 = results["step2_optimum"]
    assert abs(step2["optimal_eta"] - 50 / 33) <= 1e-12
    assert abs(step2["optimal_half_mse"] - 0.8249158249158249) <= 1e-12
    assert abs(step2["monte_carlo"]["half_mse_z"]) <= 4 and abs(step2["monte_carlo"]["best_eta_z"]) <= 4
    assert results["step3_training"]["steps"] == results["settings"]["steps"]
    step4 = results["step4_comparison"]
    assert step4["tuned"]["model_loss"]["mean"] < 1.5 * step2["optimal_half_mse"]
    assert step4["tuned"]["model_cos"]["mean"] > 0.8


def test_out_of_distribution_walkthrough_quick(tmp_path):
    _, results = run_quick("03_out_of_distribution", tmp_path)
    assert all((tmp_path / model / "config.toml").is_file() for model in ("clean", "distractors"))
    assert set(results["step1_laws"]["moments"]) == {"uniform", "gaussian", "exponential", "laplace"}


def test_learning_coefficient_walkthrough_quick(tmp_path):
    _, results = run_quick("04_learning_coefficient", tmp_path)
    assert [row["k"] for row in results["step1_power"]["rows"]] == [1, 2, 3]
    assert set(results["step5_lsa"]["points"]) == {"GD construction", "trained layer"}


def test_developmental_stages_walkthrough_quick(tmp_path):
    _, results = run_quick("05_developmental_stages", tmp_path)
    assert (tmp_path / "stages" / "seed_0" / "run" / "config.toml").is_file()
    known = results["step2_known_answers"]
    assert known["corner_found"] == [known["corner_step"]]
    assert len(known["stage_found"]) == 2
    # every smoother of the sensitivity table ran on both feature kinds
    assert len(results["step6_essential_dynamics"]["sensitivity"]) == 2 * len(StagesSetting.quick().sensitivity_smoothers())


@pytest.fixture
def walkthrough(monkeypatch):
    """Import reference/NAME.py as a module (its folder on the path, for ``walkthrough``)."""
    monkeypatch.syspath_prepend(str(REFERENCE))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"walkthrough_{name}", REFERENCE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    return load


def test_no_walkthrough_is_longer_than_400_lines():
    # the rule that keeps them readable: theory a walkthrough derives in code moves into the library (iclgd.theory,
    # iclgd.scoring), settings come from iclgd.experiments, shared printing from reference/walkthrough.py
    lengths = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in sorted(REFERENCE.glob("0*.py"))}
    assert set(lengths) >= {"01_one_step_gd.py", "02_multi_layer.py", "03_out_of_distribution.py", "04_learning_coefficient.py",
                            "05_developmental_stages.py"}
    assert all(length <= 400 for length in lengths.values()), lengths


def test_walkthrough_01_trains_the_one_layer_experiments_run_on_the_numpy_oracle_logged_every_50th_step(walkthrough):
    w01 = walkthrough("01_one_step_gd")
    for settings, experiment in ((w01.FULL, OneLayerSetting(backend="numpy", tune_tasks=10_000, n_curve_points=10)),
                                 (w01.QUICK, OneLayerSetting.quick(backend="numpy", tune_tasks=2_000, n_curve_points=10))):
        assert settings.experiment == experiment
        expected = experiment.run_config()
        assert settings.run_config() == dataclasses.replace(expected, train=dataclasses.replace(expected.train,
                                                                                            log_every=experiment.steps // 50))


def test_walkthrough_02s_full_runs_are_reproduce_multi_layer_tied_at_depths_2_and_3(walkthrough):
    settings = walkthrough("02_multi_layer").Settings.of(False, fastest_backend())
    assert settings.experiment == MultiLayerSetting(layers=(2, 3), tied=True, backend=fastest_backend())


def test_walkthrough_03_runs_the_ood_experiment_in_its_full_and_quick_settings(walkthrough):
    w03 = walkthrough("03_out_of_distribution")
    assert (w03.FULL.experiment, w03.QUICK.experiment) == (OODSetting(), OODSetting.quick())


def test_walkthrough_05s_full_run_is_the_default_laptop_run_of_reproduce_stages(walkthrough):
    # what `iclgd reproduce stages` runs with no flags, so the two share (and resume) a run folder
    w05 = walkthrough("05_developmental_stages")
    assert w05.setting_for(False) == StagesSetting(scale="laptop", seeds=1, steps=40_000, batch_size=64)
    assert w05.setting_for(True).smoke and w05.setting_for(True).backend == "numpy"


def test_beyond_constructed_tokens_walkthrough_quick(tmp_path):
    _, results = run_quick("06_beyond_constructed_tokens", tmp_path)
    # the three experiments ran in the folders `iclgd reproduce NAME --out DIR/NAME` uses
    assert all((tmp_path / name / "results.json").is_file() for name in ("interleaved", "sine", "softmax-vs-linear"))
    step1 = results["step1_tokens"]
    assert step1["copy_then_gd_max_abs_diff"] <= 1e-10 and step1["no_copy_max_abs_diff"] >= 0.1
    assert results["step3_sine"]["draws_max_abs_deviation"] <= 1e-12
    assert all(row[3] for step in ("step2_interleaved", "step3_sine", "step4_softmax_vs_linear") for row in results[step]["rows"])
