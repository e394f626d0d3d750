"""Resumable training of the attention stack (iclgd.train.stack_training.train_stack): a run
stopped and rerun takes exactly the updates of a run straight through; a run directory of another
configuration is refused, naming the field; a partial checkpoint file is ignored; the numpy and
jax engines take the same steps; the loss falls on a realisable task; evaluate is recorded at step 0
and at every checkpoint; frozen parameters stay put."""
import json

import numpy as np
import pytest

from iclgd import runio
from iclgd.models.stack import StackConfig, init_params
from iclgd.train.stack_training import HISTORY_FILE, train_stack

#: in-context linear regression, one linear-attention layer: tokens (x_i, y_i), the query (x_q, 0)
CFG = StackConfig(token_size=2, attention=("linear",))
SETTINGS = dict(lr=0.02, b1=0.9, b2=0.98, eps=1e-8, clip_norm=1.0)


def regression_batch(step: int, batch: int = 16, n_tokens: int = 6):
    """Batch ``step``: y_i = w x_i with w ~ N(0, 1) per sequence, x ~ N(0, 1); target w x_q."""
    rng = np.random.default_rng([7, step])
    x = rng.standard_normal((batch, n_tokens))
    y = rng.standard_normal((batch, 1)) * x
    tokens = np.stack([x, y], axis=-1)
    tokens[:, -1, 1] = 0.0
    return tokens, y[:, -1].copy()


def params0(seed: int = 0):
    return init_params(CFG, seed, scale=0.5)


def train(run_dir, steps, **overrides):
    arguments = dict(SETTINGS, checkpoint_every=3) | overrides
    cfg = arguments.pop("cfg", CFG)
    return train_stack(run_dir, cfg, arguments.pop("params0", params0()), arguments.pop("sample_batch", regression_batch),
                       steps=steps, **arguments)


def assert_same_params(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        assert np.array_equal(got[name], expected[name]), f"{name} differs"


def test_a_run_stopped_and_rerun_takes_the_updates_of_a_run_straight_through(tmp_path):
    straight, straight_history = train(tmp_path / "straight", 6)
    train(tmp_path / "resumed", 3)
    resumed, resumed_history = train(tmp_path / "resumed", 6)
    assert_same_params(resumed, straight)
    assert resumed_history == straight_history and resumed_history["step"] == list(range(6))


def test_a_rerun_of_a_finished_run_returns_it_without_training(tmp_path):
    done, history = train(tmp_path, 4)

    def no_batches(step):
        raise AssertionError(f"batch {step} was drawn for a finished run")

    again, again_history = train(tmp_path, 4, sample_batch=no_batches)
    assert_same_params(again, done)
    assert again_history == history


@pytest.mark.parametrize(("change", "field"), [
    (dict(lr=0.03), "lr"),
    (dict(clip_norm=2.0), "clip_norm"),
    (dict(cfg=StackConfig(token_size=2, attention=("linear",), n_heads=2)), "cfg.n_heads"),
    (dict(cfg=StackConfig(token_size=2, attention=("softmax",))), "cfg.attention"),
    (dict(params0=params0(seed=1)), "params0"),
    (dict(trainable=["layer0.w_q"]), "trainable"),
])
def test_a_directory_of_another_configuration_is_refused_naming_the_field(tmp_path, change, field):
    train(tmp_path, 2)
    changed = dict(change)
    if "cfg" in changed and "params0" not in changed:
        changed["params0"] = init_params(changed["cfg"], 0, scale=0.5)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        train(tmp_path, 4, **changed)


def test_the_number_of_steps_and_the_checkpoint_interval_may_change_between_calls(tmp_path):
    straight, _ = train(tmp_path / "straight", 5)
    train(tmp_path / "resumed", 2, checkpoint_every=2)
    resumed, _ = train(tmp_path / "resumed", 5, checkpoint_every=1)
    assert_same_params(resumed, straight)


def test_a_partial_checkpoint_file_is_ignored(tmp_path, capsys):
    straight, straight_history = train(tmp_path / "straight", 6)
    run = tmp_path / "resumed"
    train(run, 3)
    # what a non-atomic writer killed mid-write would leave: the start of a checkpoint under its final name
    whole = runio.checkpoint_path(run, 3).read_bytes()
    runio.checkpoint_path(run, 5).write_bytes(whole[: len(whole) // 2])
    resumed, resumed_history = train(run, 6)
    assert "skipping damaged checkpoint" in capsys.readouterr().err
    assert_same_params(resumed, straight)
    assert resumed_history == straight_history


def test_the_temporary_file_of_a_killed_writer_is_ignored_and_removed(tmp_path):
    straight, _ = train(tmp_path / "straight", 6)
    run = tmp_path / "resumed"
    train(run, 3)
    temporary = run / runio.CHECKPOINT_DIR / f".step_00000006.npz.abcd{runio.TEMP_SUFFIX}"
    temporary.write_bytes(b"PK\x03\x04 half a zip")
    assert [step for step, _ in runio.list_checkpoints(run)] == [0, 3]
    resumed, _ = train(run, 6)
    assert_same_params(resumed, straight)
    assert not temporary.exists()


def test_evaluate_is_recorded_at_step_0_and_at_every_checkpoint(tmp_path):
    seen = {}

    def evaluate(step, params):
        seen[step] = {name: value.copy() for name, value in params.items()}
        return {"weight_norm": np.float64(sum(float(np.sum(v * v)) for v in params.values())), "tag": f"at {step}"}

    params, history = train(tmp_path, 5, checkpoint_every=2, evaluate=evaluate)
    assert [e["step"] for e in history["evaluations"]] == [0, 2, 4, 5]
    assert [step for step, _ in runio.list_checkpoints(tmp_path)] == [0, 2, 4, 5]
    assert history["evaluations"][1]["tag"] == "at 2"
    assert_same_params(seen[0], params0())
    assert_same_params(seen[5], params)
    assert json.loads((tmp_path / HISTORY_FILE).read_text()) == history
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == SETTINGS["lr"]


def test_parameters_outside_trainable_do_not_move(tmp_path):
    start = params0()
    params, _ = train(tmp_path, 4, trainable=["layer0.w_q", "layer0.w_k"])
    for name in start:
        moved = not np.array_equal(params[name], start[name])
        assert moved == (name in ("layer0.w_q", "layer0.w_k")), name


def test_the_loss_falls_tenfold_on_a_realisable_task(tmp_path):
    """Targets from a teacher of the same architecture (other weights): 40 steps of Adam."""
    from iclgd.backends import numpy_stack

    teacher = init_params(CFG, 99, scale=1.0)

    def teacher_batch(step):
        tokens = np.random.default_rng([8, step]).standard_normal((32, 6, 2))
        return tokens, numpy_stack.predict(CFG, teacher, tokens)

    _, history = train(tmp_path, 40, checkpoint_every=40, lr=0.05, clip_norm=10.0, sample_batch=teacher_batch)
    losses = np.array(history["loss"])
    assert losses[-5:].mean() < 0.1 * losses[:5].mean()


def test_the_numpy_and_jax_engines_take_the_same_steps(tmp_path):
    pytest.importorskip("jax", reason="the jax engine needs jax and optax: pip install 'iclgd[jax]'")
    pytest.importorskip("optax", reason="the jax engine needs jax and optax: pip install 'iclgd[jax]'")
    with_numpy, numpy_history = train(tmp_path / "numpy", 5, engine="numpy")
    with_jax, jax_history = train(tmp_path / "jax", 5, engine="jax")
    np.testing.assert_allclose(jax_history["loss"], numpy_history["loss"], rtol=1e-8)
    for name in with_numpy:
        np.testing.assert_allclose(with_jax[name], with_numpy[name], rtol=1e-8, atol=1e-12, err_msg=name)
    # either engine resumes the other's run
    train(tmp_path / "mixed", 3, engine="numpy")
    mixed, _ = train(tmp_path / "mixed", 5, engine="jax")
    for name in with_numpy:
        np.testing.assert_allclose(mixed[name], with_numpy[name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_bad_arguments_are_refused_with_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="engine"):
        train(tmp_path / "a", 2, engine="torch")
    with pytest.raises(ValueError, match="trainable"):
        train(tmp_path / "b", 2, trainable=["layer3.w_q"])
    with pytest.raises(ValueError, match="b1"):
        train(tmp_path / "c", 2, b1=1.5)
    train(tmp_path / "d", 4)
    with pytest.raises(ValueError, match="step 4"):
        train(tmp_path / "d", 2)
