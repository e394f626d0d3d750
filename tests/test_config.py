"""Run configuration files: errors name the file, the key and the reason; nothing is written first."""
import pytest

from iclgd.cli import main
from iclgd.config import ConfigError, load_run_config, run_config_to_toml

GOOD = """
[task]
d = 4
n_context = 6
[model]
n_layers = 2
tied = true
[train]
steps = 10
batch_size = 32
lr = 0.001
seed = 3
checkpoint_every = 5
backend = "numpy"
"""


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_a_good_config_round_trips_through_its_resolved_toml(tmp_path):
    config = load_run_config(write(tmp_path, GOOD))
    assert config.model.d == config.task.d == 4 and config.model.n_context == 6 and config.model.tied
    assert config.train.steps == 10 and config.train.seed == 3
    again = load_run_config(write(tmp_path, run_config_to_toml(config)))
    assert again == config


@pytest.mark.parametrize(
    "table, line, key, reason",
    [
        ("train", "stepz = 10", "stepz", "unknown key"),
        ("task", "colour = 'red'", "colour", "unknown key"),
        ("train", "steps = '10'", "steps", "positive integer"),
        ("train", "lr = -1.0", "lr", "> 0"),
        ("train", "beta1 = 1.5", "beta1", r"\[0, 1\)"),
        ("train", "backend = 'cuda'", "backend", "one of"),
        ("train", "schedule = 'linear'", "schedule", "one of"),
        ("model", "n_heads = 0", "n_heads", "positive integer"),
        ("model", "d = 5", "d", "disagrees"),
        ("model", "tied = 'yes'", "tied", "True or False"),
        ("task", "x_scale = -1.0", "x_scale", "> 0"),
        ("task", "n_distractors = 9", "n_distractors", "<= n_context"),
        ("task", "d = [1, 2]", "d", "single value"),
    ],
)
def test_a_bad_value_names_the_file_the_table_the_key_and_the_reason(tmp_path, table, line, key, reason):
    text = GOOD.replace(f"[{table}]\n", f"[{table}]\n{line}\n", 1)
    text = "\n".join(l for l in text.splitlines() if not (l.startswith(f"{key} =") and l != line))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{path}: \[{table}\].*{key}.*{reason}|{path}: \[{table}\].*{reason}.*{key}"):
        load_run_config(path)


def test_an_unknown_table_is_named(tmp_path):
    path = write(tmp_path, GOOD + "\n[optimizer]\nlr = 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown table \[optimizer\]"):
        load_run_config(path)


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    path = write(tmp_path, "[train\nsteps = 1")
    with pytest.raises(ConfigError, match=rf"{path}: not valid TOML"):
        load_run_config(path)


def test_a_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "nope.toml")


def test_iclgd_train_writes_nothing_before_the_config_is_valid(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("steps = 10", "steps = 0"))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    assert "steps must be a positive integer" in capsys.readouterr().err


def test_iclgd_train_rejects_an_unknown_backend_override_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(write(tmp_path, GOOD)), "--out", str(out), "--backend", "tpu9000"]) == 2
    assert not out.exists()
    assert "backend" in capsys.readouterr().err
