"""reference/walkthrough.py, the helpers every walkthrough shares: tables of right-aligned columns, the
checks they narrate, and the small formatters (percentages, vectors, matrices, run configs)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from runs import small_config

from iclgd.config import run_config_to_toml

REFERENCE = Path(__file__).resolve().parent.parent / "reference"


@pytest.fixture(scope="module")
def w():
    """reference/walkthrough.py, imported as the walkthroughs import it (from their own folder)."""
    spec = importlib.util.spec_from_file_location("walkthrough_helpers_under_test", REFERENCE / "walkthrough.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_a_table_line_indents_two_spaces_and_right_aligns_each_cell_one_space_apart(w):
    assert w.Table(3, 5).line(1, "ab") == "  " + "  1" + " " + "   ab"
    assert w.Table(3, 5).line("x") == "    x"  # fewer cells: the last columns are left off
    assert w.Table(2).line("wider") == "  wider"  # a cell wider than its column is not cut


def test_a_table_line_is_the_format_spec_it_replaces(w):
    for k, eta, estimate in ((1, 1.50830, "0.8456 ± 0.0187"), (12, -0.25, "-0.2112 ± 0.0111")):
        assert w.Table(2, 10, 18).line(k, f"{eta:.4f}", estimate) == f"  {k:2d} {eta:10.4f} {estimate:>18}"


def test_a_table_refuses_more_cells_than_columns(w):
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        w.Table(2, 2).line(1, 2, 3)


def test_a_table_block_is_its_header_and_rows_and_a_blank_line(w):
    assert w.Table(4, 4).block(("K", "loss"), [(1, "0.5"), (2, "0.25")]) == "     K loss\n     1  0.5\n     2 0.25\n"


def test_a_check_is_recorded_and_printed_and_end_adds_a_blank_line(w):
    t = w.Transcript()
    checks = w.Checks(t)
    assert checks("loss below 1", "0.5", "< 1", 0.5 < 1) is True
    assert checks.small("LSA = GD", 2.5e-16, "1e-12", end="\n") is True
    assert checks.small("far off", 0.1, "1e-9") is False
    assert [(c.name, c.measured, c.criterion, c.ok) for c in checks.items] == [
        ("loss below 1", "0.5", "< 1", True), ("LSA = GD", "2.500e-16", "<= 1e-12", True), ("far off", "1.000e-01", "<= 1e-9", False)]
    assert t.lines == ["  [pass] loss below 1: 0.5   (criterion: < 1)", "  [pass] LSA = GD: 2.500e-16   (criterion: <= 1e-12)", "",
                       "  [FAIL] far off: 1.000e-01   (criterion: <= 1e-9)"]
    assert not checks.all_passed


def test_percent_is_a_signed_share_of_the_whole(w):
    assert w.percent(1, 4) == "+25.00%" and w.percent(-1, 3, 1) == "-33.3%"


def test_vector_line_writes_every_entry_with_the_same_decimals(w):
    assert w.vector_line(np.array([1.0, -0.5, 1 / 3])) == "[1.0000, -0.5000, 0.3333]"


def test_matrix_lines_label_the_columns_as_the_rows_unless_told_otherwise(w):
    matrix = np.array([[1.0, 0.001], [-0.25, 0.0]])
    assert w.matrix_lines(matrix, ["a", "b"]) == w.matrix_lines(matrix, ["a", "b"], ["a", "b"])
    assert w.matrix_lines(matrix, ["a", "b"]).split("\n") == [" " * 5 + "       a       b", "    a    1.00       .", "    b   -0.25       ."]
    assert w.matrix_lines(matrix, ["a", "b"], ["k1", "k2"], decimals=0).split("\n")[0] == " " * 5 + "    k1    k2"


def test_config_block_is_config_toml_indented_four_spaces_and_a_blank_line(w):
    config = small_config()
    block = w.config_block(config)
    assert block.endswith("\n") and not block.endswith("\n\n")
    assert [line[4:] for line in block.rstrip("\n").split("\n") if line] == [line for line in run_config_to_toml(config).splitlines() if line]
    assert all(line.startswith("    ") for line in block.rstrip("\n").split("\n") if line)


def test_train_runs_trains_each_config_in_its_folder_and_says_how_long_it_took(w, tmp_path):
    t = w.Transcript()
    configs = {"K1/a": small_config(steps=2, checkpoint_every=2, log_every=1, batch_size=8),
               "K1/b": small_config(steps=3, checkpoint_every=3, log_every=1, batch_size=8)}
    trained, seconds = w.train_runs(t, tmp_path, configs)
    assert list(trained) == list(seconds) == ["K1/a", "K1/b"]
    assert all((tmp_path / name / "config.toml").is_file() for name in configs)
    assert all(trained[name][0] == configs[name].model and set(trained[name][1]) for name in configs)
    assert t.lines[-2].startswith("  trained in K1/a ") and ", K1/b " in t.lines[-2] and t.lines[-1] == ""
