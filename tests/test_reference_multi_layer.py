"""Walkthrough 02 (reference/02_multi_layer.py) runs in quick mode, and the claims it prints hold."""
from test_reference import run_quick

NAME = "02_multi_layer"


def test_multi_layer_walkthrough_quick(tmp_path):
    stdout, results = run_quick(NAME, tmp_path, timeout=600)
    for k in (2, 3):
        for model in ("lsa", "gd", "gdpp"):
            assert (tmp_path / "runs" / f"K{k}" / model / "config.toml").is_file()

    # every check is in the JSON, and holds
    checks = results["checks"]
    assert {"name", "measured", "criterion", "ok"} <= set(checks[0])
    assert len(checks) == stdout.count("[pass]") // 2  # each check is printed where it is made and in the summary

    # step 1: GD++ by hand, gdpp_predict, the tied LSA of gdpp_construction and (gamma = 0) GD agree
    step1 = results["step1_construction"]
    for key in ("max_abs_by_hand_vs_gdpp_predict", "max_abs_by_hand_gamma0_vs_gd_predict",
                "max_abs_construction_products_vs_structure", "max_abs_lsa_vs_gdpp_predict", "max_abs_gamma0_vs_gd"):
        assert step1[key] <= 1e-9, key
    assert step1["depths"] == [1, 2, 3]
    for values in step1["per_depth"].values():
        assert len(values) == 3 and max(values) <= 1e-9

    # step 2: tuned K-step GD falls with K, near the quoted values
    rows = results["step2_deeper_gd"]["rows"]
    assert [row["k"] for row in rows] == [1, 2, 3, 4, 5]
    losses = [row["loss"]["mean"] for row in rows]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    for k, quoted in results["step2_deeper_gd"]["quoted"].items():
        loss = rows[int(k) - 1]["loss"]
        assert abs(loss["mean"] - quoted) <= 3 * loss["stderr"]

    # step 3: learned GD = tuned GD, learned GD++ < learned GD
    assert results["step3_learned_rates"]["eigenbasis_max_abs_diff"] <= 1e-9
    for row in results["step3_learned_rates"]["rows"].values():
        assert abs(row["gd"]["minus_tuned_gd"]["mean"]) <= 0.01 * row["tuned_gd_loss"]["mean"]
        assert row["gdpp_minus_gd"]["mean"] < 0

    # step 4: per-layer read-outs end in the reported loss
    for depth in results["step4_recurrent_lsa"]["depths"].values():
        for name, per_layer in depth["loss_per_layer"].items():
            assert abs(per_layer[-1]["mean"] - depth["loss"][name]["mean"]) <= 1e-9
