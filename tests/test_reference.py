"""The reference walkthroughs run, and the claims they print hold (quick mode)."""
import json
import subprocess
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "reference"


def test_one_step_gd_walkthrough_quick(tmp_path):
    script = REFERENCE / "01_one_step_gd.py"
    results_dir = REFERENCE / "results"
    recorded = {p: p.stat().st_mtime_ns for p in results_dir.glob("01_one_step_gd.*")} if results_dir.is_dir() else {}

    completed = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    stdout = completed.stdout
    assert stdout.rstrip().endswith("all checks passed")
    assert "[FAIL]" not in stdout

    # what it printed is what it wrote, into --out and not into reference/results
    transcript = (tmp_path / "01_one_step_gd.txt").read_text(encoding="utf-8")
    assert transcript == stdout
    results = json.loads((tmp_path / "01_one_step_gd.json").read_text(encoding="utf-8"))
    current = {p: p.stat().st_mtime_ns for p in results_dir.glob("01_one_step_gd.*")} if results_dir.is_dir() else {}
    assert current == recorded, "--quick must not write into reference/results"
    assert (tmp_path / "run" / "config.toml").is_file()

    # the claims, re-checked from the recorded numbers
    assert results["mode"] == "quick" and results["all_checks_passed"] is True
    assert results["checks"] and all(check["ok"] for check in results["checks"])
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
    results_dir = REFERENCE / "results"
    recorded = {p: p.stat().st_mtime_ns for p in results_dir.glob("03_out_of_distribution.*")}
    completed = subprocess.run(
        [sys.executable, str(REFERENCE / "03_out_of_distribution.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert completed.stdout.rstrip().endswith("all checks passed") and "[FAIL]" not in completed.stdout
    assert (tmp_path / "03_out_of_distribution.txt").read_text(encoding="utf-8") == completed.stdout
    assert {p: p.stat().st_mtime_ns for p in results_dir.glob("03_out_of_distribution.*")} == recorded
    results = json.loads((tmp_path / "03_out_of_distribution.json").read_text(encoding="utf-8"))
    assert results["mode"] == "quick" and results["all_checks_passed"] is True
    assert all(check["ok"] for check in results["checks"])
    assert all((tmp_path / model / "config.toml").is_file() for model in ("clean", "distractors"))
    assert set(results["step1_laws"]["moments"]) == {"uniform", "gaussian", "exponential", "laplace"}
