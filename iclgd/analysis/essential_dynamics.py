r"""Essential dynamics (ED): the trajectory of a model's outputs over training, in its leading
principal components, and the developmental milestones read off its geometry.

Hoogland et al., "The Developmental Landscape of In-Context Learning" (arXiv 2402.02364), after
Carroll et al.: the behaviour of checkpoint t is the vector of its outputs on
one fixed set of validation sequences; the rows of these vectors, stacked over training, are
reduced by PCA; the smoothed trajectory in the leading components turns where the model changes
what it computes, and those turns (cusps of the evolute, sharp turns) mark stage boundaries.

Shapes: T checkpoints, F features, n kept components, B validation sequences, K pairs per
sequence, D the input dimension (tokens of size D + 1, 2K tokens per sequence).

1. Features (``collect_outputs``).  For checkpoint t with parameters w_t, on fixed tokens (B, 2K, D+1):

       kind="all"          f_t = vec(out_t)   out_t = backend.forward(cfg, w_t, tokens)[-1], (B, 2K, D+1):
                                              every output coordinate at every position (the paper's
                                              f-ED), F = B * 2K * (D + 1)
       kind="predictions"  f_t = vec(yhat_t)  yhat_t = backend.predict(cfg, w_t, tokens), (B, K):
                                              the predictions of y_1..y_K only, F = B * K

   flattened in C order (sequence-major), stacked into X (T, F).  The sequences are processed
   ``chunk_size`` at a time, so memory is bounded by one chunk's forward pass.  (For an LSA
   config the same reads give F = B (N+1)(d+1) and F = B.)

2. PCA (``pca``).  mu = mean_t X_t (F,), Xc = X - mu, the thin SVD Xc = U S V^T;
   components = the first n rows of V^T (n, F), scores = U_n S_n = Xc components^T (T, n),
   explained_variance_ratio_k = S_k^2 / sum_j S_j^2 (the share of the total variance
   ||Xc||_F^2; the sum over all components is 1).  Signs: each component is flipped so that its
   largest-magnitude loading is positive (deterministic output, as scikit-learn's svd_flip on V).

3. Smoothing (``smooth``), along the training-time coordinate x_t: x_t = t, the checkpoint
   index (``time="index"``, the authors' choice; their checkpoints are the union of log- and
   linear-spaced steps, so the index is log-like early and linear late), or x_t = log(1 + step_t)
   (``time="log_step"``).  The bandwidth sigma_t may vary along training as in the authors'
   devinterp code: sigma_t = sigma up to index 0.2 * late_from, then linear in the index up to
   late_sigma at index late_from, late_sigma after (``late_sigma=None``: constant sigma).

   method="local_quadratic" (the default): at every t, the Gaussian-weighted least-squares fit of
   a quadratic in u = (x_s - x_t) / sigma_t,

       min_{a,b,c} sum_s exp(-u_s^2 / 2) |y_s - a - b u_s - c u_s^2 / 2|^2,

   gives the smoothed position r_t = a, velocity r'_t = b / sigma_t and acceleration
   r''_t = c / sigma_t^2 (derivatives with respect to x).  It reproduces straight lines and
   parabolas exactly, is unbiased at the ends (a one-sided fit, no reflection), and gives the
   derivatives from the same fit (local polynomial regression; Fan & Gijbels 1996).
   method="gaussian_filter": the authors' smoother, scipy.ndimage.gaussian_filter1d (mode
   "reflect", truncated at 4 sigma) in the index, then central differences
   r'_t = (r_{t+1} - r_{t-1}) / 2 and r''_t = r_{t+1} - 2 r_t + r_{t-1} (the end points take
   their neighbour's values, as the authors' clamp does); index time only.

4. Curvature (``curvature``), of the smoothed curve r (T, m) in any m >= 2 dimensions:

       kappa = sqrt(|r'|^2 |r''|^2 - (r'.r'')^2) / |r'|^3 = |r''_perp| / |r'|^2,
       r''_perp = r'' - (r''.T) T,  T = r' / |r'| the unit tangent,  N = r''_perp / |r''_perp|,
       radius rho = 1 / kappa,   centre of the osculating circle  c = r + rho N = r + |r'|^2 r''_perp / |r''_perp|^2.

   The centres c_t form the evolute.  kappa, rho and c are geometric (invariant under
   reparametrisation), so the choice of x (index or log step) matters only through the
   smoothing kernel.  Where r''_perp = 0 (a straight piece) kappa = 0 and c is undefined (NaN).
   The milestones are detected in the full n-dimensional trajectory; ``EDResult.planar`` holds the
   same quantities in the plane of each pair of components (PC1-PC2, PC1-PC3, PC2-PC3, ...), as the
   paper plots them.

5. Milestones (``milestones``).  For a plane curve the evolute's velocity is c' = rho' N, so the
   evolute has a cusp exactly where rho' = 0 changes sign: at the curve's vertices, the local
   extrema of the curvature.  The turning angle over a half-window of w_t checkpoints is

       theta_t = angle(r'_{t-w_t}, r'_{t+w_t}) in [0, 180] degrees,  defined for w_t <= t <= T - 1 - w_t,

   with w_t = ceil(2 sigma_t), sigma_t the smoothing bandwidth at t in checkpoints (for log time:
   sigma_t over the local spacing of x), so the window follows a bandwidth that varies along training.

   cusp:        a local maximum of kappa (rho' changes sign from - to +) with
                kappa_t >= cusp_factor * median(kappa) and theta_t >= min_cusp_angle degrees
                (the angle guards against the wiggles smoothed noise leaves on a straight piece,
                and against round-off on an exactly straight one);
   sharp turn:  each maximal run of consecutive t with theta_t >= turn_angle degrees, placed at
                the largest kappa in the run;
   both only where theta_t is defined (so at least w_t from the ends, where the one-sided fit is
   noisy), and optionally ``edge`` further checkpoints from them; the median is over those
   checkpoints.  A detection at most ``merge_within`` (default w_t) checkpoints after the previous
   one joins its milestone, which keeps the detection with the larger turning angle and the union
   of the kinds.  Each milestone is reported as a checkpoint step with its evidence: index,
   curvature, curvature / median, turning angle.

   Defaults (``MilestoneSettings``): cusp_factor 3, min_cusp_angle 15 degrees, turn_angle 45
   degrees, w_t = ceil(2 sigma_t).  Why: a corner of the raw trajectory is rounded by the kernel
   over about +-2 sigma checkpoints, so velocities 2 sigma before and after it lie on the two
   straight pieces and theta is the full deflection there, while noise of relative size e (per
   checkpoint, relative to the distance moved per checkpoint) deflects the smoothed velocity by
   about e / sigma^(3/2) radians; a factor of 3 over the median separates a turn's curvature peak
   from the flat stretches that make up most of a trajectory.  Measured on synthetic corners
   (tests/test_essential_dynamics.py): deflections of 45-150 degrees, speed ratios 0.5-2 across
   the corner and noise e <= 0.03 give exactly one milestone within 2 checkpoints of the corner
   (sigma = 3).  With more noise (per feature, relative to the faster piece's step) the corner is
   still found, but 0 of 40 runs at e = 0.1, 1 at 0.2, 2 at 0.3 and 10 at 0.5 had an extra, spurious
   detection, mostly near an end; straight lines gave none at e <= 0.2 and 2 in 30 runs at 0.3.

Everything takes explicit inputs and returns frozen dataclasses; NumPy only, except
method="gaussian_filter", which imports scipy inside the function (``pip install scipy``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np

from iclgd._checks import finite_array, finite_float, nonnegative_int, positive_int

FEATURE_KINDS = ("all", "predictions")
SMOOTHING_METHODS = ("local_quadratic", "gaussian_filter")
TIME_AXES = ("index", "log_step")
MILESTONE_KINDS = ("cusp", "turn")

#: the largest condition number of a local fit's 3 x 3 normal matrix before the kernel is
#: declared too narrow for the checkpoints it covers
_MAX_CONDITION = 1e10


# --- 1. features -------------------------------------------------------------------------------------------


def feature_count(cfg, n_sequences: int, kind: str = "all") -> int:
    """F, the number of features ``collect_outputs`` gives per checkpoint: transformer
    B * 2K * (D + 1) ("all") or B * K ("predictions"); LSA B * (N + 1) * (d + 1) or B."""
    n_sequences = positive_int("n_sequences", n_sequences)
    kind = _choice("kind", kind, FEATURE_KINDS)
    if hasattr(cfg, "n_examples"):  # the transformer: 2K tokens of size D + 1, K predictions
        return n_sequences * (2 * cfg.n_examples * (cfg.d + 1) if kind == "all" else cfg.n_examples)
    if hasattr(cfg, "n_context"):  # the LSA: N + 1 tokens of size d + 1, one prediction
        return n_sequences * ((cfg.n_context + 1) * (cfg.d + 1) if kind == "all" else 1)
    raise ValueError(f"cfg must be an iclgd.TransformerConfig or iclgd.LSAConfig; got {type(cfg).__name__}")


def collect_outputs(backend, cfg, checkpoints: Iterable, tokens, kind: str = "all",
                    chunk_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(steps (T,) int64, features (T, F) float64): each checkpoint's outputs on fixed ``tokens``.

    backend:      a backend object (``iclgd.get_backend(name)``) or its name
    cfg:          the model's config (``iclgd.TransformerConfig``; an LSAConfig works too)
    checkpoints:  an iterable of (step, params) pairs, steps strictly increasing; it is consumed
                  once, so a generator that loads one checkpoint at a time keeps one in memory
    tokens:       (B, 2K, D + 1) fixed validation sequences, or an object with ``.tokens`` (a batch)
    kind:         "all": ``backend.forward(cfg, params, tokens)[-1]``, the full output (B, 2K, D+1),
                  flattened, F = B * 2K * (D + 1) (the paper's f-ED); "predictions":
                  ``backend.predict``, (B, K) flattened, F = B * K
    chunk_size:   sequences per forward pass (bounds the memory of the activations)
    """
    if isinstance(backend, str):
        from iclgd.backends import get_backend

        backend = get_backend(backend)
    kind = _choice("kind", kind, FEATURE_KINDS)
    chunk_size = positive_int("chunk_size", chunk_size)
    tokens = getattr(tokens, "tokens", tokens)
    tokens = finite_array("tokens", tokens, ndim=3)
    n_sequences = tokens.shape[0]
    if n_sequences == 0:
        raise ValueError("tokens must hold at least one sequence; got shape " + str(tokens.shape))
    n_features = feature_count(cfg, n_sequences, kind)
    steps, rows = [], []
    for position, item in enumerate(checkpoints):
        try:
            step, params = item
        except (TypeError, ValueError):
            raise ValueError(f"checkpoints must yield (step, params) pairs; item {position} is a {type(item).__name__}") from None
        step = nonnegative_int(f"the step of checkpoint {position}", step)
        if steps and step <= steps[-1]:
            raise ValueError(f"checkpoint steps must be strictly increasing; got {step} after {steps[-1]} (item {position})")
        parts = []
        for start in range(0, n_sequences, chunk_size):
            chunk = tokens[start:start + chunk_size]
            out = backend.forward(cfg, params, chunk)[-1] if kind == "all" else backend.predict(cfg, params, chunk)
            parts.append(np.asarray(out, dtype=np.float64).reshape(chunk.shape[0], -1))
        row = np.concatenate(parts, axis=0).reshape(-1)
        if row.size != n_features:  # a backend's output not of the documented shape
            raise ValueError(f"checkpoint {step} gave {row.size} features; expected {n_features} for kind={kind!r}")
        steps.append(step)
        rows.append(row)
    if not rows:
        raise ValueError("checkpoints must hold at least one (step, params) pair; got none")
    return np.asarray(steps, dtype=np.int64), np.stack(rows)


# --- 2. PCA ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PCAResult:
    """PCA over checkpoints (see the module docstring, item 2).

    mean                      (F,) the mean feature vector over checkpoints
    components                (n, F) orthonormal rows, the principal directions, largest variance first
    explained_variance_ratio  (n,) S_k^2 / sum_j S_j^2, each component's share of the total variance
    singular_values           (n,) S_k
    scores                    (T, n) (X - mean) components^T, the trajectory in the components
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    scores: np.ndarray

    def transform(self, features) -> np.ndarray:
        """(features - mean) components^T: other rows (..., F) in these components (..., n)."""
        features = finite_array("features", features)
        if features.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"features must have {self.mean.shape[0]} columns; got shape {features.shape}")
        return (features - self.mean) @ self.components.T


def pca(features, n_components: int) -> PCAResult:
    """The leading ``n_components`` principal components of ``features`` (T, F), centred over the
    T checkpoints, by the thin SVD of the centred matrix; n_components <= min(T, F)."""
    features = _features(features)
    n_rows, n_cols = features.shape
    n_components = positive_int("n_components", n_components)
    if n_components > min(n_rows, n_cols):
        raise ValueError(f"n_components must be <= min(checkpoints, features) = {min(n_rows, n_cols)}; got {n_components}")
    mean = features.mean(axis=0)
    centred = features - mean
    total = float(np.sum(centred * centred))
    if not total > 0:
        raise ValueError("features do not vary over the checkpoints (every row is the same): PCA has no direction")
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    u, s, vt = u[:, :n_components], s[:n_components], vt[:n_components]
    signs = np.sign(vt[np.arange(n_components), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    vt = vt * signs[:, None]
    u = u * signs[None, :]
    return PCAResult(
        mean=mean, components=vt, explained_variance_ratio=s * s / total, singular_values=s, scores=u * s,
    )


# --- 3. smoothing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothingSettings:
    """How the trajectory is smoothed along training (module docstring, item 3).

    method       "local_quadratic" (Gaussian-weighted local quadratic fit, NumPy) or
                 "gaussian_filter" (the authors': scipy.ndimage.gaussian_filter1d + central differences)
    sigma        the Gaussian kernel's standard deviation, in units of ``time``: checkpoints for
                 "index", log(1 + step) for "log_step"
    time         "index" (the checkpoint index; the authors') or "log_step" (log(1 + step))
    late_sigma   None (constant sigma), or the bandwidth from checkpoint index ``late_from`` on,
                 reached linearly from index 0.2 * late_from (the authors' early/late smoothing:
                 sigma 10, late_sigma 60, late_from 200)
    late_from    the checkpoint index at which late_sigma is reached (required with late_sigma)
    """

    method: str = "local_quadratic"
    sigma: float = 3.0
    time: str = "index"
    late_sigma: float | None = None
    late_from: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "method", _choice("method", self.method, SMOOTHING_METHODS))
        set_(self, "time", _choice("time", self.time, TIME_AXES))
        set_(self, "sigma", finite_float("sigma", self.sigma, positive=True))
        if self.method == "gaussian_filter" and self.time != "index":
            raise ValueError('method="gaussian_filter" smooths in the checkpoint index; use time="index" '
                             f'(or method="local_quadratic" for time={self.time!r})')
        if (self.late_sigma is None) != (self.late_from is None):
            raise ValueError(f"late_sigma and late_from go together; got late_sigma = {self.late_sigma}, late_from = {self.late_from}")
        if self.late_sigma is not None:
            set_(self, "late_sigma", finite_float("late_sigma", self.late_sigma, positive=True))
            set_(self, "late_from", positive_int("late_from", self.late_from))

    def sigmas(self, n_checkpoints: int) -> np.ndarray:
        """(T,) the bandwidth at each checkpoint index."""
        index = np.arange(n_checkpoints, dtype=np.float64)
        if self.late_sigma is None:
            return np.full(n_checkpoints, self.sigma)
        start, end = 0.2 * self.late_from, float(self.late_from)
        ramp = self.sigma + (self.late_sigma - self.sigma) * (index - start) / (end - start)
        return np.where(index < start, self.sigma, np.where(index > end, self.late_sigma, ramp))


@dataclass(frozen=True)
class SmoothedTrajectory:
    """The smoothed trajectory and its derivatives with respect to the time coordinate x.

    x             (T,) the time coordinate: the checkpoint index, or log(1 + step)
    position      (T, n) r
    velocity      (T, n) dr/dx
    acceleration  (T, n) d^2 r / dx^2
    sigmas        (T,) the bandwidth used at each checkpoint (units of x)
    settings      the SmoothingSettings
    """

    x: np.ndarray
    position: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    sigmas: np.ndarray
    settings: SmoothingSettings

    def sigma_in_checkpoints(self) -> np.ndarray:
        """(T,) the bandwidth at each checkpoint in checkpoints: sigma_t itself for index time, for
        log time sigma_t over the local spacing of x (``np.gradient(x)``)."""
        if self.settings.time == "index":
            return self.sigmas.copy()
        return self.sigmas / np.gradient(self.x)


def time_axis(steps, time: str = "index") -> np.ndarray:
    """(T,) x_t: the index t ("index") or log(1 + step_t) ("log_step"); steps strictly increasing."""
    steps = _steps(steps)
    time = _choice("time", time, TIME_AXES)
    return np.arange(steps.size, dtype=np.float64) if time == "index" else np.log1p(steps.astype(np.float64))


def smooth(trajectory, steps, settings: SmoothingSettings | None = None) -> SmoothedTrajectory:
    """Smooth ``trajectory`` (T, n) along training (``steps`` (T,), strictly increasing) and take
    its first two derivatives with respect to the time coordinate (module docstring, item 3)."""
    settings = SmoothingSettings() if settings is None else settings
    if not isinstance(settings, SmoothingSettings):
        raise ValueError(f"settings must be a SmoothingSettings; got {type(settings).__name__}")
    trajectory = finite_array("trajectory", trajectory, ndim=2, dtype=np.float64)
    steps = _steps(steps)
    if steps.size != trajectory.shape[0]:
        raise ValueError(f"steps must have one entry per row of trajectory ({trajectory.shape[0]}); got {steps.size}")
    if trajectory.shape[0] < 3:
        raise ValueError(f"smoothing needs at least 3 checkpoints; got {trajectory.shape[0]}")
    x = time_axis(steps, settings.time)
    sigmas = settings.sigmas(x.size)
    if settings.method == "local_quadratic":
        position, velocity, acceleration = _local_quadratic(trajectory, x, sigmas)
    else:
        position, velocity, acceleration = _gaussian_filter(trajectory, sigmas)
    return SmoothedTrajectory(x=x, position=position, velocity=velocity, acceleration=acceleration,
                              sigmas=sigmas, settings=settings)


def _local_quadratic(y: np.ndarray, x: np.ndarray, sigmas: np.ndarray, block: int = 256):
    """Gaussian-weighted least-squares quadratic at every x_t: (position, velocity, acceleration),
    ``block`` targets at a time (memory O(block T))."""
    parts = [_local_quadratic_rows(y, x, sigmas, start, min(start + block, x.size)) for start in range(0, x.size, block)]
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))


def _local_quadratic_rows(y: np.ndarray, x: np.ndarray, sigmas: np.ndarray, start: int, stop: int):
    """``_local_quadratic`` at the targets start..stop-1."""
    sigmas = sigmas[start:stop]
    u = (x[None, :] - x[start:stop, None]) / sigmas[:, None]  # (targets, T sources)
    weights = np.exp(-0.5 * u * u)
    basis = np.stack([np.ones_like(u), u, 0.5 * u * u], axis=-1)  # (T, T, 3)
    weighted = basis * weights[..., None]
    normal = np.einsum("tsi,tsj->tij", weighted, basis)  # (T, 3, 3)
    condition = np.linalg.cond(normal)
    bad = np.flatnonzero(~(condition < _MAX_CONDITION))
    if bad.size:
        raise ValueError(
            f"the smoothing kernel (sigma = {sigmas[bad[0]]:.3g}) covers too few checkpoints around index {start + bad[0]} "
            f"to fit a local quadratic (condition number {condition[bad[0]]:.3g}); increase sigma"
        )
    rhs = np.einsum("tsi,sn->tin", weighted, y)  # (T, 3, n)
    coef = np.linalg.solve(normal, rhs)  # (T, 3, n): a, b, c per target
    return coef[:, 0], coef[:, 1] / sigmas[:, None], coef[:, 2] / (sigmas * sigmas)[:, None]


def _gaussian_filter(y: np.ndarray, sigmas: np.ndarray):
    """The authors' smoother: gaussian_filter1d (reflect, truncate 4) per bandwidth, then
    central differences in the index, the end points clamped to their neighbours."""
    from scipy.ndimage import gaussian_filter1d

    position = np.empty_like(y)
    for sigma in np.unique(sigmas):
        rows = sigmas == sigma
        position[rows] = gaussian_filter1d(y, float(sigma), axis=0, mode="reflect", truncate=4.0)[rows]
    velocity = np.empty_like(position)
    acceleration = np.empty_like(position)
    velocity[1:-1] = 0.5 * (position[2:] - position[:-2])
    acceleration[1:-1] = position[2:] - 2.0 * position[1:-1] + position[:-2]
    for end, inner in ((0, 1), (-1, -2)):
        velocity[end], acceleration[end] = velocity[inner], acceleration[inner]
    return position, velocity, acceleration


# --- 4. curvature ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curvature:
    """Curvature and osculating circles of a curve in m >= 2 dimensions (module docstring, item 4).

    curvature  (T,) kappa >= 0
    radius     (T,) rho = 1 / kappa (inf where kappa = 0)
    centres    (T, m) the osculating circles' centres, the evolute (NaN where kappa = 0)
    normal     (T, m) the unit principal normal N (NaN where kappa = 0)
    speed      (T,) |r'|
    dims       the components (0-based) the curve lives in
    """

    curvature: np.ndarray
    radius: np.ndarray
    centres: np.ndarray
    normal: np.ndarray
    speed: np.ndarray
    dims: tuple[int, ...]


def curvature(position, velocity, acceleration, dims: tuple[int, ...] | None = None) -> Curvature:
    """kappa, rho, N and the evolute r + rho N of the curve with ``position``, ``velocity`` and
    ``acceleration`` (each (T, m), m >= 2; the derivatives in any parameter).  ``dims`` is only
    recorded (which components the curve's columns are)."""
    position = finite_array("position", position, ndim=2, dtype=np.float64)
    velocity = finite_array("velocity", velocity, ndim=2, dtype=np.float64)
    acceleration = finite_array("acceleration", acceleration, ndim=2, dtype=np.float64)
    if not position.shape == velocity.shape == acceleration.shape:
        raise ValueError(f"position, velocity and acceleration must have one shape; got {position.shape}, "
                         f"{velocity.shape}, {acceleration.shape}")
    if position.shape[1] < 2:
        raise ValueError(f"curvature needs a curve in at least 2 dimensions; got {position.shape[1]}")
    speed2 = np.sum(velocity * velocity, axis=1)
    if not np.all(speed2 > 0):
        first = int(np.flatnonzero(~(speed2 > 0))[0])
        raise ValueError(f"the curve stands still at row {first} (zero velocity): its curvature is undefined there")
    along = np.sum(acceleration * velocity, axis=1) / speed2
    perp = acceleration - along[:, None] * velocity  # r''_perp = r'' - (r''.T) T
    perp2 = np.sum(perp * perp, axis=1)
    straight = perp2 == 0  # exactly; a fitted straight line keeps a round-off kappa ~ 1e-16 / length
    kappa = np.sqrt(perp2) / speed2
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where(straight, np.inf, 1.0 / np.where(straight, 1.0, kappa))
        normal = np.where(straight[:, None], np.nan, perp / np.sqrt(np.where(straight, 1.0, perp2))[:, None])
        centres = np.where(straight[:, None], np.nan,
                           position + (speed2 / np.where(straight, 1.0, perp2))[:, None] * perp)
    dims = tuple(range(position.shape[1])) if dims is None else tuple(int(d) for d in dims)
    return Curvature(curvature=kappa, radius=radius, centres=centres, normal=normal, speed=np.sqrt(speed2), dims=dims)


def trajectory_curvature(smoothed: SmoothedTrajectory, dims: tuple[int, ...] | None = None) -> Curvature:
    """``curvature`` of the smoothed trajectory, in the components ``dims`` (default: all of them,
    the full n-dimensional curve; a pair (i, j) gives the paper's planar panel PC(i+1)-PC(j+1))."""
    n = smoothed.position.shape[1]
    dims = tuple(range(n)) if dims is None else tuple(dims)
    if len(dims) < 2 or any(not 0 <= d < n for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"dims must name at least two distinct components in 0..{n - 1}; got {dims}")
    cols = list(dims)
    return curvature(smoothed.position[:, cols], smoothed.velocity[:, cols], smoothed.acceleration[:, cols], dims)


def planar_curvatures(smoothed: SmoothedTrajectory) -> dict[tuple[int, int], Curvature]:
    """The curvature and evolute in the plane of every pair of components (i, j), i < j: the
    panels PC1-PC2, PC1-PC3, PC2-PC3, ... of the paper's figure."""
    n = smoothed.position.shape[1]
    return {pair: trajectory_curvature(smoothed, pair) for pair in combinations(range(n), 2)}


# --- 5. milestones -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MilestoneSettings:
    """Thresholds of milestone detection (module docstring, item 5).

    cusp_factor     a cusp's curvature must be at least this times the median curvature
    min_cusp_angle  ... and the turning angle there at least this many degrees
    turn_angle      a sharp turn: the turning angle is at least this many degrees
    window          w, checkpoints before and after for the turning angle (None: w_t = ceil(2 sigma_t),
                    sigma_t the bandwidth at t in checkpoints, so it follows a varying bandwidth)
    edge            no milestone within this many checkpoints of either end (None: none beyond the
                    w_t that the turning angle needs)
    merge_within    detections at most this many checkpoints apart are one milestone (None: the
                    window w_t at the earlier one)
    """

    cusp_factor: float = 3.0
    min_cusp_angle: float = 15.0
    turn_angle: float = 45.0
    window: int | None = None
    edge: int | None = None
    merge_within: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "cusp_factor", finite_float("cusp_factor", self.cusp_factor, positive=True))
        for name in ("min_cusp_angle", "turn_angle"):
            value = finite_float(name, getattr(self, name), nonnegative=True)
            if value > 180:
                raise ValueError(f"{name} is an angle in degrees, 0..180; got {value}")
            set_(self, name, value)
        if self.window is not None:
            set_(self, "window", positive_int("window", self.window))
        for name in ("edge", "merge_within"):
            if getattr(self, name) is not None:
                set_(self, name, nonnegative_int(name, getattr(self, name)))

    def windows(self, smoothed: SmoothedTrajectory) -> np.ndarray:
        """(T,) int: w_t, the turning angle's half-window at each checkpoint."""
        if self.window is not None:
            return np.full(smoothed.x.size, self.window, dtype=np.int64)
        return np.maximum(1, np.ceil(2.0 * smoothed.sigma_in_checkpoints() - 1e-9)).astype(np.int64)


@dataclass(frozen=True)
class Milestone:
    """A detected milestone: a checkpoint and the evidence for it.

    step             the checkpoint's training step
    index            its checkpoint index
    kinds            ("cusp",), ("turn",) or ("cusp", "turn"): which criteria found it (after merging)
    curvature        kappa there
    curvature_ratio  kappa / median(kappa)
    turning_angle    theta there, degrees
    """

    step: int
    index: int
    kinds: tuple[str, ...]
    curvature: float
    curvature_ratio: float
    turning_angle: float


def turning_angles(velocity, window) -> np.ndarray:
    """(T,) theta_t = the angle in degrees between velocity[t - w_t] and velocity[t + w_t]; NaN
    where t - w_t < 0 or t + w_t > T - 1.  ``window``: one w for all t, or (T,) w_t."""
    velocity = finite_array("velocity", velocity, ndim=2, dtype=np.float64)
    n_rows = velocity.shape[0]
    if np.ndim(window) == 0:
        window = np.full(n_rows, positive_int("window", window), dtype=np.int64)
    window = finite_array("window", window, ndim=1)
    if window.size != n_rows or window.dtype.kind not in "iu" or window.min(initial=1) < 1:
        raise ValueError(f"window must be a positive integer or {n_rows} of them; got {window!r}")
    index = np.arange(n_rows)
    defined = (index - window >= 0) & (index + window <= n_rows - 1)
    theta = np.full(n_rows, np.nan)
    t = index[defined]
    before, after = velocity[t - window[defined]], velocity[t + window[defined]]
    norms = np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.clip(np.sum(before * after, axis=1) / norms, -1.0, 1.0)
    theta[t] = np.degrees(np.arccos(cosine))
    return theta


@dataclass(frozen=True)
class _Evidence:
    """What the detection looks at, per checkpoint."""

    kappa: np.ndarray
    theta: np.ndarray
    windows: np.ndarray
    inside: np.ndarray
    median: float


def _evidence(smoothed: SmoothedTrajectory, settings: MilestoneSettings, curv: Curvature) -> _Evidence:
    windows = settings.windows(smoothed)
    theta = turning_angles(smoothed.velocity, windows)
    inside = np.isfinite(theta)
    if settings.edge:
        inside[:settings.edge] = False
        inside[max(0, theta.size - settings.edge):] = False
    median = float(np.median(curv.curvature[inside])) if inside.any() else math.nan
    return _Evidence(kappa=curv.curvature, theta=theta, windows=windows, inside=inside, median=median)


def milestones(smoothed: SmoothedTrajectory, steps, settings: MilestoneSettings | None = None,
               curv: Curvature | None = None) -> list[Milestone]:
    """The milestones of a smoothed trajectory (module docstring, item 5), in training order,
    detected in the full n-dimensional curve (``curv``: its ``trajectory_curvature``, computed
    when not given)."""
    settings = MilestoneSettings() if settings is None else settings
    if not isinstance(settings, MilestoneSettings):
        raise ValueError(f"settings must be a MilestoneSettings; got {type(settings).__name__}")
    steps = _steps(steps)
    n_rows = smoothed.position.shape[0]
    if steps.size != n_rows:
        raise ValueError(f"steps must have one entry per checkpoint ({n_rows}); got {steps.size}")
    curv = trajectory_curvature(smoothed) if curv is None else curv
    ev = _evidence(smoothed, settings, curv)
    kappa, theta = ev.kappa, ev.theta
    if not ev.inside.any():
        return []
    found: dict[int, set[str]] = {}
    # cusps of the evolute: rho' changes sign from - to + (a local maximum of kappa, plateaus once)
    for t in np.flatnonzero(ev.inside):
        if 0 < t < n_rows - 1 and kappa[t] > kappa[t - 1] and kappa[t] >= kappa[t + 1]:
            if kappa[t] > 0 and kappa[t] >= settings.cusp_factor * ev.median and theta[t] >= settings.min_cusp_angle:
                found.setdefault(int(t), set()).add("cusp")
    # sharp turns: runs of theta >= turn_angle, each at its largest curvature
    sharp = ev.inside & (np.nan_to_num(theta, nan=-1.0) >= settings.turn_angle)
    for run in _runs(sharp):
        found.setdefault(int(run[np.argmax(kappa[run])]), set()).add("turn")
    within = ev.windows if settings.merge_within is None else np.full(n_rows, settings.merge_within)
    return [
        Milestone(step=int(steps[t]), index=t, kinds=tuple(k for k in MILESTONE_KINDS if k in kinds),
                  curvature=float(kappa[t]),
                  curvature_ratio=float(kappa[t] / ev.median) if ev.median > 0 else math.inf,
                  turning_angle=float(theta[t]))
        for t, kinds in _merge(sorted(found), found, theta, kappa, within)
    ]


def _runs(mask: np.ndarray) -> list[np.ndarray]:
    """The maximal runs of consecutive True entries, as index arrays."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)


def _merge(indices: list[int], kinds: dict[int, set[str]], theta: np.ndarray, kappa: np.ndarray,
           within: np.ndarray) -> list[tuple[int, set[str]]]:
    """Group sorted detections each at most ``within[previous]`` after the previous one; keep each
    group's largest turning angle (then largest curvature) with the union of the group's kinds."""
    groups: list[list[int]] = []
    for t in indices:
        if groups and t - groups[-1][-1] <= within[groups[-1][-1]]:
            groups[-1].append(t)
        else:
            groups.append([t])
    return [(max(group, key=lambda t: (theta[t], kappa[t])), set().union(*(kinds[t] for t in group)))
            for group in groups]


# --- 6. the whole analysis ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EDResult:
    """Essential dynamics of one training run.

    steps             (T,) the checkpoints' steps
    pca               the PCAResult (scores: the raw trajectory)
    smoothed          the SmoothedTrajectory in the n components
    curvature         Curvature of the full n-dimensional smoothed trajectory (its evolute: .centres)
    planar            {(i, j): Curvature} in the plane of each pair of components (the paper's panels)
    turning_angle     (T,) theta_t in degrees (NaN near the ends)
    windows           (T,) w_t, the turning angle's half-window in checkpoints
    milestones        the detected milestones, in training order
    detection         the MilestoneSettings used
    median_curvature  the median of kappa over the checkpoints where milestones may lie (what
                      cusp_factor multiplies; NaN when there are none)
    """

    steps: np.ndarray
    pca: PCAResult
    smoothed: SmoothedTrajectory
    curvature: Curvature
    planar: dict
    turning_angle: np.ndarray
    windows: np.ndarray
    milestones: list
    detection: MilestoneSettings
    median_curvature: float

    @property
    def milestone_steps(self) -> list[int]:
        return [m.step for m in self.milestones]

    def summary(self, trajectory: bool = False) -> dict:
        """The result as JSON-ready numbers (NaN and inf as None); ``trajectory=True`` adds the
        per-checkpoint arrays (raw and smoothed scores, curvature, turning angle, evolute)."""
        from iclgd.analysis.llc import json_ready

        out = {
            "n_checkpoints": int(self.steps.size),
            "n_features": int(self.pca.mean.size),
            "n_components": int(self.pca.scores.shape[1]),
            "explained_variance_ratio": self.pca.explained_variance_ratio,
            "smoothing": asdict(self.smoothed.settings),
            "detection": asdict(self.detection),
            "window_range": [int(self.windows.min()), int(self.windows.max())],
            "median_curvature": self.median_curvature,
            "milestone_steps": self.milestone_steps,
            "milestones": [{**asdict(m), "kinds": list(m.kinds)} for m in self.milestones],
        }
        if trajectory:
            out["trajectory"] = {
                "steps": self.steps, "scores": self.pca.scores, "smoothed": self.smoothed.position,
                "curvature": self.curvature.curvature, "turning_angle": self.turning_angle,
                "evolute": self.curvature.centres,
            }
        return json_ready(out)


def essential_dynamics(features, steps, n_components: int = 3, smoothing: SmoothingSettings | None = None,
                       detection: MilestoneSettings | None = None) -> EDResult:
    """PCA of ``features`` (T, F) over checkpoints at ``steps`` (T,), the smoothed trajectory in
    the leading ``n_components`` (>= 2), its curvature and evolute (full space and every plane of
    two components), and its milestones."""
    features = _features(features)
    steps = _steps(steps)
    if steps.size != features.shape[0]:
        raise ValueError(f"steps must have one entry per row of features ({features.shape[0]}); got {steps.size}")
    n_components = positive_int("n_components", n_components)
    if n_components < 2:
        raise ValueError(f"n_components must be >= 2 (curvature needs a curve in at least a plane); got {n_components}")
    detection = MilestoneSettings() if detection is None else detection
    decomposition = pca(features, n_components)
    smoothed = smooth(decomposition.scores, steps, smoothing)
    curv = trajectory_curvature(smoothed)
    ev = _evidence(smoothed, detection, curv)
    return EDResult(
        steps=steps, pca=decomposition, smoothed=smoothed, curvature=curv, planar=planar_curvatures(smoothed),
        turning_angle=ev.theta, windows=ev.windows, milestones=milestones(smoothed, steps, detection, curv),
        detection=detection, median_curvature=ev.median,
    )


# --- checks ------------------------------------------------------------------------------------------------


def _choice(name: str, value: object, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {list(options)}; got {value!r}")
    return value


def _features(features) -> np.ndarray:
    features = finite_array("features", features, ndim=2, dtype=np.float64)
    if features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(f"features must be (checkpoints >= 2, features >= 1); got shape {features.shape}")
    return features


def _steps(steps) -> np.ndarray:
    """steps as int64 (T,), non-negative integers, strictly increasing."""
    array = finite_array("steps", steps, ndim=1)
    if array.dtype.kind == "f":
        if not np.all(array == np.round(array)):
            raise ValueError("steps must be whole numbers (training steps)")
        array = array.astype(np.int64)
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"steps must be >= 0; got {int(array.min())}")
    if array.size > 1 and not np.all(np.diff(array) > 0):
        bad = int(np.flatnonzero(np.diff(array) <= 0)[0])
        raise ValueError(f"steps must be strictly increasing; got {int(array[bad + 1])} after {int(array[bad])} (index {bad + 1})")
    return array
