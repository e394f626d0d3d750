"""The full `iclgd reproduce one-layer` runs (about a minute each on 2 cores): `pytest -m slow`."""
import json

import pytest

from iclgd.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("x_scale, optimum", [("paper", 0.8249), ("authors_code", 0.2062)])
def test_default_run_lands_within_one_percent_of_the_optimum_with_aligned_sensitivities(tmp_path, x_scale, optimum):
    assert main(["reproduce", "one-layer", "--out", str(tmp_path), "--x-scale", x_scale, "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert abs(results["trained_expected_loss"]["mean"] / optimum - 1) <= 0.01
    assert results["model_cos"]["mean"] >= 0.99
