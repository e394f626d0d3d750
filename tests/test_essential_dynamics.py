"""Essential dynamics (iclgd.analysis.essential_dynamics) on trajectories of known geometry: a
corner is one milestone, a plane is two components, a circle has curvature 1/R and its evolute is
its centre, a line has no curvature and no milestone; and the features of a checkpoint are the
model's outputs, chunked or not."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iclgd
from iclgd.analysis.essential_dynamics import (
    MilestoneSettings,
    SmoothingSettings,
    collect_outputs,
    essential_dynamics,
    feature_count,
    pca,
    smooth,
    trajectory_curvature,
)
from iclgd.models.transformer import TransformerConfig, init_params

#: a corner is found within this many checkpoints of where it is (the default sigma is 3)
CORNER_TOLERANCE = 2


def embed(points: np.ndarray, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """points (T, m) mapped into R^F by a random map with orthonormal columns, plus a random offset."""
    basis, _ = np.linalg.qr(rng.standard_normal((n_features, points.shape[1])))
    return points @ basis.T + 3.0 * rng.standard_normal(n_features)


def corner_trajectory(n_checkpoints: int, corner: int, angle_deg: float, speed_after: float) -> np.ndarray:
    """(T, 2): unit steps along e1 up to checkpoint ``corner``, then steps of ``speed_after``
    along the direction turned by ``angle_deg``."""
    t = np.arange(n_checkpoints, dtype=np.float64)[:, None]
    angle = np.radians(angle_deg)
    after = np.array([np.cos(angle), np.sin(angle)])
    return np.where(t < corner, t * np.array([1.0, 0.0]), corner * np.array([1.0, 0.0]) + speed_after * (t - corner) * after)


@settings(max_examples=15)
@given(n_checkpoints=st.integers(40, 120), corner_at=st.floats(0.3, 0.7), angle=st.floats(45.0, 150.0),
       speed_after=st.floats(0.5, 2.0), n_features=st.integers(4, 60), noise=st.floats(0.0, 0.03),
       seed=st.integers(0, 2**16))
def test_two_segments_joined_at_a_corner_are_one_milestone_at_the_corner(
        n_checkpoints, corner_at, angle, speed_after, n_features, noise, seed):
    rng = np.random.default_rng(seed)
    corner = int(corner_at * n_checkpoints)
    features = embed(corner_trajectory(n_checkpoints, corner, angle, speed_after), n_features, rng)
    features += noise * rng.standard_normal(features.shape)  # noise relative to the unit step per checkpoint
    steps = 100 * np.arange(n_checkpoints) + 7
    result = essential_dynamics(features, steps)
    assert len(result.milestones) == 1, result.summary()["milestones"]
    milestone = result.milestones[0]
    assert abs(milestone.index - corner) <= CORNER_TOLERANCE
    assert milestone.step == steps[milestone.index]
    assert "cusp" in milestone.kinds
    assert milestone.turning_angle == pytest.approx(angle, abs=15.0)


def test_a_corner_is_found_on_log_spaced_checkpoints_in_log_time():
    steps = np.unique(np.round(np.geomspace(10, 100_000, 80)).astype(np.int64))
    features = embed(corner_trajectory(steps.size, 40, 90.0, 1.0), 12, np.random.default_rng(0))
    result = essential_dynamics(features, steps, smoothing=SmoothingSettings(time="log_step", sigma=0.35))
    assert [abs(m.index - 40) <= CORNER_TOLERANCE for m in result.milestones] == [True]


@settings(max_examples=20)
@given(n_checkpoints=st.integers(5, 60), n_features=st.integers(3, 40), seed=st.integers(0, 2**16))
def test_a_trajectory_in_a_plane_has_two_components_explaining_all_variance(n_checkpoints, n_features, seed):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n_checkpoints, 2)).cumsum(axis=0)
    result = pca(embed(points, n_features, rng), 3)
    ratio = result.explained_variance_ratio
    assert abs(ratio[0] + ratio[1] - 1.0) <= 1e-10
    assert ratio[2] <= 1e-10
    assert ratio[0] >= ratio[1]


@settings(max_examples=15)
@given(n_checkpoints=st.integers(3, 30), n_features=st.integers(2, 30), seed=st.integers(0, 2**16))
def test_pca_is_invariant_to_a_global_translation_of_the_features(n_checkpoints, n_features, seed):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_checkpoints, n_features))
    n = min(n_checkpoints, n_features, 3)
    before = pca(features, n)
    after = pca(features + 10.0 * rng.standard_normal(n_features), n)
    np.testing.assert_allclose(after.explained_variance_ratio, before.explained_variance_ratio, rtol=1e-9, atol=1e-12)
    keep = before.explained_variance_ratio > 1e-6  # directions of repeated singular values are not unique
    keep[1:] &= np.abs(np.diff(before.singular_values)) > 1e-6 * before.singular_values[0]
    np.testing.assert_allclose(np.abs(after.scores[:, keep]), np.abs(before.scores[:, keep]), atol=1e-8)


@settings(max_examples=15)
@given(n_checkpoints=st.integers(2, 30), n_features=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_the_scores_reproduce_the_centred_data_when_all_components_are_kept(n_checkpoints, n_features, seed):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_checkpoints, n_features)) * rng.uniform(0.1, 10.0, n_features) + 5.0
    result = pca(features, min(n_checkpoints, n_features))
    np.testing.assert_allclose(result.scores @ result.components, features - features.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(result.components.shape[0]), atol=1e-12)
    assert result.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(result.transform(features), result.scores, atol=1e-10)


@settings(max_examples=10)
@given(radius=st.floats(1e-2, 1e3), centre=st.tuples(st.floats(-100, 100), st.floats(-100, 100)),
       n_extra=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_a_densely_sampled_circle_has_curvature_one_over_r_and_its_evolute_is_the_centre(radius, centre, n_extra, seed):
    n_checkpoints = 400  # angle step 1.5 pi / 400 = 0.012 rad; sigma 3 checkpoints: bias ~ (0.035)^2 / 2
    angles = np.linspace(0.0, 1.5 * np.pi, n_checkpoints)
    points = np.column_stack([radius * np.cos(angles), radius * np.sin(angles), np.zeros((n_checkpoints, n_extra))])
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((2 + n_extra, 2 + n_extra)))
    shift = np.concatenate([centre, np.zeros(n_extra)])
    curve = (points + shift) @ rotation.T  # a circle in a plane of R^(2 + n_extra)
    curv = trajectory_curvature(smooth(curve, np.arange(n_checkpoints)))
    np.testing.assert_allclose(curv.curvature * radius, 1.0, atol=3e-3)
    distance = np.linalg.norm(curv.centres - shift @ rotation.T, axis=1)
    assert np.max(distance) <= 3e-3 * radius


def test_a_straight_line_has_zero_curvature_and_no_milestone():
    rng = np.random.default_rng(1)
    steps = np.arange(0, 2000, 25)
    features = embed(np.outer(np.arange(steps.size), [1.0]) @ np.ones((1, 2)), 20, rng)  # a line in R^20
    result = essential_dynamics(features, steps, n_components=2)
    length = np.linalg.norm(result.smoothed.position[-1] - result.smoothed.position[0])
    assert np.max(result.curvature.curvature) * length <= 1e-9
    assert result.milestones == []
    assert np.nanmax(result.turning_angle) <= 1e-4


def test_the_authors_gaussian_filter_agrees_with_the_local_quadratic_away_from_the_ends():
    pytest.importorskip("scipy")
    angles = np.linspace(0.0, np.pi, 300)
    circle = np.column_stack([np.cos(angles), np.sin(angles)])
    for method in ("gaussian_filter", "local_quadratic"):
        curv = trajectory_curvature(smooth(circle, np.arange(300), SmoothingSettings(method=method, sigma=3.0)))
        np.testing.assert_allclose(curv.curvature[20:-20], 1.0, atol=2e-3)


def test_milestones_do_not_depend_on_the_scale_rotation_or_offset_of_the_features():
    rng = np.random.default_rng(3)
    features = embed(corner_trajectory(80, 35, 100.0, 1.0), 10, rng) + 0.02 * rng.standard_normal((80, 10))
    rotation, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    moved = 7.5 * features @ rotation + 100.0
    steps = np.arange(80) * 50
    assert essential_dynamics(moved, steps).milestone_steps == essential_dynamics(features, steps).milestone_steps


def test_the_summary_is_strict_json_with_the_milestone_steps():
    rng = np.random.default_rng(4)
    features = embed(corner_trajectory(60, 30, 90.0, 1.0), 6, rng)
    result = essential_dynamics(features, np.arange(60) * 10, n_components=3,
                                detection=MilestoneSettings(turn_angle=60.0))
    summary = json.loads(json.dumps(result.summary(trajectory=True), allow_nan=False))
    assert summary["milestone_steps"] == [300]
    assert summary["window_range"] == [6, 6]  # ceil(2 sigma) with the default sigma 3
    assert len(summary["trajectory"]["scores"]) == 60
    assert set(result.planar) == {(0, 1), (0, 2), (1, 2)}


@pytest.mark.parametrize("kind", ["all", "predictions"])
def test_collect_outputs_gives_each_checkpoints_outputs_as_a_direct_call_does(kind):
    cfg = TransformerConfig(d=2, n_examples=4, n_layers=1, n_heads=2, d_model=8, d_mlp=8)
    backend = iclgd.get_backend("numpy")
    batch = iclgd.NoisyRegressionTask(d=2, n_examples=4).sample(7, 0)
    checkpoints = [(step, init_params(cfg, seed)) for seed, step in enumerate((0, 10, 300))]
    steps, features = collect_outputs(backend, cfg, iter(checkpoints), batch, kind=kind, chunk_size=3)
    assert steps.tolist() == [0, 10, 300]
    per_sequence = 2 * 4 * 3 if kind == "all" else 4  # 2K tokens of D + 1 outputs, or K predictions
    assert features.shape == (3, 7 * per_sequence) == (3, feature_count(cfg, 7, kind))
    for row, (_, params) in zip(features, checkpoints):
        direct = backend.forward(cfg, params, batch.tokens)[-1] if kind == "all" else backend.predict(cfg, params, batch.tokens)
        np.testing.assert_allclose(row, direct.reshape(-1), rtol=1e-12, atol=1e-12)
    if kind == "all":  # the predictions are the first output coordinate at the x tokens
        _, predictions = collect_outputs("numpy", cfg, checkpoints, batch.tokens, kind="predictions")
        np.testing.assert_allclose(features.reshape(3, 7, 8, 3)[:, :, 0::2, 0], predictions.reshape(3, 7, 4), atol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: essential_dynamics(np.ones((10, 4)) * np.arange(10)[:, None], np.arange(10)[::-1]), "strictly increasing"),
    (lambda: essential_dynamics(np.random.default_rng(0).standard_normal((10, 4)), np.arange(10), n_components=1), ">= 2"),
    (lambda: pca(np.ones((5, 3)), 2), "do not vary"),
    (lambda: pca(np.random.default_rng(0).standard_normal((5, 3)), 4), "n_components"),
    (lambda: smooth(np.random.default_rng(0).standard_normal((10, 2)), np.arange(10), SmoothingSettings(sigma=0.05)), "increase sigma"),
    (lambda: SmoothingSettings(method="gaussian_filter", time="log_step"), "index"),
    (lambda: SmoothingSettings(late_sigma=10.0), "go together"),
    (lambda: MilestoneSettings(turn_angle=200.0), "degrees"),
    (lambda: collect_outputs("numpy", TransformerConfig(d=2, n_examples=4, n_layers=1, n_heads=2, d_model=8, d_mlp=8),
                             [], np.zeros((2, 8, 3))), "at least one"),
])
def test_bad_input_raises_value_error_saying_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
