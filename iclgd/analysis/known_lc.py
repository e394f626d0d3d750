r"""Models whose learning coefficient is known: the calibration targets of the LLC estimator.

Each model is an *objective* (``iclgd.analysis.objective``: ``n_samples``, ``n_positions =
None``, ``loss(params, indices)``, ``loss_and_grad(params, indices)``, params a dict name ->
float64 array) with ``initial_params()``, the point w* whose local learning coefficient (LLC) is
estimated, ``learning_coefficient``, the asymptotic lambda(w*), and ``multiplicity`` m (the
Bayes free energy is n L_n + lambda log n - (m - 1) log log n + O(1): where m > 1 the estimate
approaches lambda slowest).  Models without data ignore ``indices``; their ``n_samples``
only sets the estimator's default nbeta = n / log n.  ``loss_on_grid(points)`` evaluates the
loss at many points at once, points (G, P) holding the flattened parameters in the order of
``initial_params()`` (used by ``tempered_llc``).

The models
----------
PowerPotential(k)
    One parameter w, L(w) = w^(2k), w* = 0, lambda = 1 / (2k), m = 1.

NormalCrossing(powers p_1..p_P)
    y = x prod_i w_i^(p_i) + noise, x ~ N(0, 1), true function 0; the population loss less the
    noise's part is

        L(w) = (1/2) E_x[(x prod_i w_i^(p_i))^2] = (1/2) prod_i w_i^(2 p_i),

    w* = 0, lambda = 1 / (2 max_i p_i), m = #{i : p_i = max_j p_j} (a monomial's RLCT under a
    prior positive at 0: min over i of 1 / (2 p_i); Watanabe 2009, "Algebraic geometry and
    statistical learning theory", sec. 2.4).

LinearRegression(d, n)
    Data X (n, d) ~ N(0, I), y = X w0 + noise_std N(0, 1), w0 ~ N(0, I_d) from the seed;
    L_I(w) = (1/2) mean_{i in I} (y_i - x_i . w)^2; w* = argmin L (least squares on all n rows);
    lambda = d / 2, m = 1 (a regular model).  The full-data loss is exactly quadratic,
    L(w) = L(w*) + (1/2) (w - w*)^T H (w - w*), H = X^T X / n with eigenvalues h_i, so the
    localised tempered posterior below is Gaussian with precision a_i = nbeta h_i + gamma along
    eigenvector i and

        nbeta (E[L] - L(w*)) = (1/2) sum_i nbeta h_i / a_i.

    Full-batch SGLD at step eps (the unadjusted Langevin algorithm) does not sample it exactly:
    along eigenvector i the update is z' = (1 - eps a_i / 2) z + sqrt(eps) xi, so the variance
    obeys v' = (1 - eps a_i / 2)^2 v + eps, whose fixed point is

        v_i = eps / (1 - (1 - eps a_i / 2)^2) = 1 / (a_i (1 - eps a_i / 4))     (0 < eps a_i < 4),

    and the chain's stationary expectation of the estimator is
    (1/2) sum_i nbeta h_i / (a_i (1 - eps a_i / 4))  (``exact_tempered_llc``).

ReducedRankRegression(M = n_in, N = n_out, H = n_hidden, r = true_rank)
    y = B A x + noise, A (H, M), B (N, H), x ~ N(0, I_M); the population loss less the noise's
    part is L(A, B) = (1/2) ||B A - B0 A0||_F^2.  The true (A0, B0) has r generic hidden units
    (Gaussian directions of unit length) and H - r zero ones (zero rows of A0, zero columns of
    B0): the most singular point of the set {B A = B0 A0} (every point of it with rank A = rank B
    = r is carried to (A0, B0) by some (A, B) -> (G A, B G^-1), which preserves L), whose local
    learning coefficient is the global one, given in closed form by Aoyagi & Watanabe (2005),
    "Stochastic complexities of reduced rank regression in Bayesian estimation", Neural
    Networks 18(7):924-933, Main Theorem (``rrr_learning_coefficient``):

    case 1  N + r <= M + H, M + r <= N + H, H + r <= M + N:
            lambda = [2 (H + r)(M + N) - (M - N)^2 - (H + r)^2] / 8, m = 1   if M + N + H + r is even,
            lambda = [2 (H + r)(M + N) - (M - N)^2 - (H + r)^2 + 1] / 8, m = 2   if it is odd;
    case 2  M + H < N + r:   lambda = (H M - H r + N r) / 2, m = 1;
    case 3  N + H < M + r:   lambda = (H N - H r + M r) / 2, m = 1;
    case 4  M + N < H + r:   lambda = M N / 2, m = 1.

The estimator's finite-nbeta target
-----------------------------------
The LLC estimator (``iclgd.analysis.llc``) estimates nbeta (E_p[L] - L(w*)) under the localised
tempered posterior

    p(w) ∝ exp(-nbeta L(w) - (gamma / 2) ||w - w*||^2),

which tends to lambda as nbeta -> infinity (gamma fixed): slowly where m > 1 (a correction of
order (m - 1) / log nbeta), and where m = 1 as a power of nbeta that is small when the next pole
of the model's zeta function is close (NormalCrossing((1, 2)): poles at -1/4 and -1/2, still 7 %
below lambda at nbeta = 10^4, gamma = 1).  ``tempered_llc`` computes it by quadrature for models
with one or two parameters in all: the midpoint rule on a uniform grid of n_grid points per axis
over the box w* +- half_width, the weights exp(-nbeta (L - L(w*)) - (gamma/2) ||w - w*||^2)
stabilised by subtracting their largest log (n_grid must resolve the narrowest valley of the
loss in the box: check by doubling it).  Closed forms it reproduces: PowerPotential without localization
gives exactly 1 / (2k) at every nbeta (u = nbeta w^(2k) is Gamma(1 / (2k), 1) distributed) and a
quadratic L = L(w*) + (h/2) w^2 gives (1/2) nbeta h / (nbeta h + gamma).

The chain's discretisation bias.  Full-batch SGLD, w' = w - (eps/2) grad U(w) + sqrt(eps) xi, is
the unadjusted Langevin algorithm for p ∝ exp(-U); it samples not p but, to first order in eps,

    p_eps ∝ exp(-U - eps (Lap U / 4 - |grad U|^2 / 8)),

so the estimator's expectation is E_p[f] - eps Cov_p(f, Lap U / 4 - |grad U|^2 / 8) + O(eps^2),
f = nbeta (L - L(w*)) (``tempered_llc(..., step_size=eps)``).  A first-order expansion of the
stationary law of the Euler scheme (in the manner of Talay & Tubaro's expansions); for a Gaussian
(U = a z^2 / 2: precision a (1 - eps a / 4)) it is the first order of the exact variance
1 / (a (1 - eps a / 4)) above, and the tests check it against the chain's exact stationary law
computed on a grid for w^4.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "LinearRegression",
    "NormalCrossing",
    "PowerPotential",
    "ReducedRankRegression",
    "rrr_learning_coefficient",
    "rrr_multiplicity",
    "tempered_llc",
]


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _diverged(params: dict) -> tuple[float, dict]:
    """What a float overflow in a toy loss returns: an infinite loss and NaN gradients, which the
    estimator reports as a diverged chain (LLCDiverged) instead of an OverflowError."""
    return math.inf, {k: np.full(np.shape(v), math.nan) for k, v in params.items()}


# --- the power potential -----------------------------------------------------------------------------


class PowerPotential:
    """L(w) = w^(2k) on one parameter "w" of shape (1,); w* = 0, lambda = 1 / (2k) (no data)."""

    n_positions = None

    def __init__(self, k: int, n_samples: int = 1000):
        self.k = _count("k", k, 1)
        self.n_samples = _count("n_samples", n_samples, 1)

    @property
    def learning_coefficient(self) -> float:
        return 1.0 / (2 * self.k)

    multiplicity = 1

    def initial_params(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(1)}

    def loss(self, params: dict, indices: np.ndarray | None = None) -> float:
        return self.loss_and_grad(params, indices)[0]

    def loss_and_grad(self, params: dict, indices: np.ndarray | None = None) -> tuple[float, dict]:
        w = float(np.asarray(params["w"], np.float64)[0])  # a scalar: plain floats are fastest
        try:
            return w ** (2 * self.k), {"w": np.array([2 * self.k * w ** (2 * self.k - 1)])}
        except OverflowError:
            return _diverged(params)

    def loss_on_grid(self, points: np.ndarray) -> np.ndarray:
        return points[:, 0] ** (2 * self.k)


# --- the normal crossing -----------------------------------------------------------------------------


class NormalCrossing:
    """L(w) = (1/2) prod_i w_i^(2 p_i) on one parameter "w" of shape (len(powers),): the
    population loss of y = x prod_i w_i^(p_i) + noise, x ~ N(0, 1), less the noise's part.
    w* = 0, lambda = 1 / (2 max p), multiplicity = how many p_i attain the max (no data)."""

    n_positions = None

    def __init__(self, powers, n_samples: int = 1000):
        self.powers = tuple(_count("each power", p, 0) for p in powers)
        if not self.powers or max(self.powers) < 1:
            raise ValueError(f"powers must be non-negative integers, at least one positive; got {powers!r}")
        self.n_samples = _count("n_samples", n_samples, 1)

    @property
    def learning_coefficient(self) -> float:
        return 1.0 / (2 * max(self.powers))

    @property
    def multiplicity(self) -> int:
        return self.powers.count(max(self.powers))

    def initial_params(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(len(self.powers))}

    def loss(self, params: dict, indices: np.ndarray | None = None) -> float:
        return self.loss_and_grad(params, indices)[0]

    def loss_and_grad(self, params: dict, indices: np.ndarray | None = None) -> tuple[float, dict]:
        w = np.asarray(params["w"], np.float64).tolist()  # a few scalars: plain floats are fastest
        grad = [0.0] * len(w)
        try:
            factors = [w_i ** (2 * p) for w_i, p in zip(w, self.powers)]  # w_i^(2 p_i)
            for j, p in enumerate(self.powers):
                if p > 0:  # d/dw_j (1/2) prod_i w_i^(2 p_i) = p_j w_j^(2 p_j - 1) prod_{i != j} w_i^(2 p_i)
                    grad[j] = p * w[j] ** (2 * p - 1) * math.prod(factors[:j] + factors[j + 1:])
        except OverflowError:
            return _diverged(params)
        return 0.5 * math.prod(factors), {"w": np.array(grad)}

    def loss_on_grid(self, points: np.ndarray) -> np.ndarray:
        return 0.5 * np.prod(points ** (2 * np.array(self.powers)), axis=1)


# --- linear regression -------------------------------------------------------------------------------


class LinearRegression:
    """y = X w0 + noise_std N(0, 1) on n rows, X ~ N(0, I_d), w0 ~ N(0, I_d), all drawn from
    default_rng(seed); L_I(w) = (1/2) mean_{i in I} (y_i - x_i . w)^2 on one parameter "w" of
    shape (d,).  w* = the least-squares solution on all rows, lambda = d / 2."""

    n_positions = None
    multiplicity = 1

    def __init__(self, d: int, n_samples: int, noise_std: float = 1.0, seed: int = 0):
        self.d = _count("d", d, 1)
        self.n_samples = _count("n_samples", n_samples, d)
        rng = np.random.default_rng(seed)
        self.w0 = rng.standard_normal(self.d)
        self.X = rng.standard_normal((self.n_samples, self.d))
        self.y = self.X @ self.w0 + float(noise_std) * rng.standard_normal(self.n_samples)
        self.w_star = np.linalg.lstsq(self.X, self.y, rcond=None)[0]
        self.hessian = self.X.T @ self.X / self.n_samples  # H: the full-data loss's Hessian
        self._xy = self.X.T @ self.y / self.n_samples
        self._yy = float(self.y @ self.y) / self.n_samples

    @property
    def learning_coefficient(self) -> float:
        return self.d / 2

    def initial_params(self) -> dict[str, np.ndarray]:
        return {"w": self.w_star.copy()}

    def loss(self, params: dict, indices: np.ndarray | None = None) -> float:
        return self.loss_and_grad(params, indices)[0]

    def loss_and_grad(self, params: dict, indices: np.ndarray | None = None) -> tuple[float, dict]:
        """L_I and its gradient -mean_{i in I} x_i (y_i - x_i . w); on all rows (indices None)
        from the sufficient statistics, L = (1/2) (mean y^2 - 2 w . mean(x y) + w^T H w) and
        grad = H w - mean(x y): the same numbers in O(d^2) instead of O(n d)."""
        w = np.asarray(params["w"], np.float64)
        if indices is None:
            hw = self.hessian @ w
            return 0.5 * float(self._yy - 2 * w @ self._xy + w @ hw), {"w": hw - self._xy}
        x = self.X[np.asarray(indices)]
        residual = self.y[np.asarray(indices)] - x @ w
        return 0.5 * float(np.mean(residual**2)), {"w": -(x.T @ residual) / residual.size}

    def loss_on_grid(self, points: np.ndarray) -> np.ndarray:
        """The full-data loss at each row of points (G, d), from the sufficient statistics."""
        return 0.5 * (self._yy - 2 * points @ self._xy + np.einsum("gi,ij,gj->g", points, self.hessian, points))

    def exact_tempered_llc(self, nbeta: float, localization: float, step_size: float = 0.0) -> float:
        """nbeta (E[L] - L(w*)) under the localised tempered posterior (step_size 0), or under the
        stationary law of full-batch SGLD at that step size: (1/2) sum_i nbeta h_i / (a_i (1 - eps
        a_i / 4)), a_i = nbeta h_i + gamma (see the module docstring).  ValueError where some
        eps a_i >= 4: the chain has no stationary law (it diverges)."""
        h = np.linalg.eigvalsh(self.hessian)
        a = nbeta * h + localization
        if np.any(step_size * a >= 4):
            raise ValueError(f"step_size {step_size} is unstable: eps * (nbeta h_max + gamma) = {step_size * a.max():.3g} >= 4")
        return 0.5 * float(np.sum(nbeta * h / (a * (1 - step_size * a / 4))))


# --- reduced rank regression -------------------------------------------------------------------------


def rrr_learning_coefficient(n_in: int, n_out: int, n_hidden: int, true_rank: int) -> float:
    """The learning coefficient of reduced rank regression (Aoyagi & Watanabe 2005, Main Theorem):
    M = n_in inputs, N = n_out outputs, H = n_hidden, true rank r <= min(M, N, H).  See the module
    docstring for the four cases."""
    m, n, h, r = _rrr_dims(n_in, n_out, n_hidden, true_rank)
    if m + h < n + r:
        return (h * m - h * r + n * r) / 2
    if n + h < m + r:
        return (h * n - h * r + m * r) / 2
    if m + n < h + r:
        return m * n / 2
    return (2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2 + (m + n + h + r) % 2) / 8


def rrr_multiplicity(n_in: int, n_out: int, n_hidden: int, true_rank: int) -> int:
    """m of ``rrr_learning_coefficient``: 2 in case 1 when M + N + H + r is odd, else 1."""
    m, n, h, r = _rrr_dims(n_in, n_out, n_hidden, true_rank)
    case_1 = n + r <= m + h and m + r <= n + h and h + r <= m + n
    return 2 if case_1 and (m + n + h + r) % 2 == 1 else 1


def _rrr_dims(n_in, n_out, n_hidden, true_rank) -> tuple[int, int, int, int]:
    m, n, h = _count("n_in", n_in, 1), _count("n_out", n_out, 1), _count("n_hidden", n_hidden, 1)
    r = _count("true_rank", true_rank, 0)
    if r > min(m, n, h):
        raise ValueError(f"true_rank must be at most min(n_in, n_out, n_hidden) = {min(m, n, h)}; got {r}")
    return m, n, h, r


class ReducedRankRegression:
    """L(A, B) = (1/2) ||B A - B0 A0||_F^2, parameters "A" (n_hidden, n_in) and "B" (n_out,
    n_hidden): the population loss of y = B A x + noise, x ~ N(0, I), less the noise's part (no
    data).  w* = (A0, B0): the first true_rank hidden units generic, each unit's input weights
    (a row of A0) and output weights (a column of B0) a Gaussian direction (default_rng(seed))
    of unit length, so that the units are balanced and B0 A0 has singular values of order 1; the
    other units zero.  lambda = rrr_learning_coefficient(n_in, n_out, n_hidden, true_rank)."""

    n_positions = None

    def __init__(self, n_in: int, n_out: int, n_hidden: int, true_rank: int, seed: int = 0, n_samples: int = 1000):
        self.n_in, self.n_out, self.n_hidden, self.true_rank = _rrr_dims(n_in, n_out, n_hidden, true_rank)
        self.n_samples = _count("n_samples", n_samples, 1)
        rng = np.random.default_rng(seed)
        r = self.true_rank
        self.A0 = np.zeros((self.n_hidden, self.n_in))
        self.B0 = np.zeros((self.n_out, self.n_hidden))
        a, b = rng.standard_normal((r, self.n_in)), rng.standard_normal((self.n_out, r))
        self.A0[:r] = a / np.linalg.norm(a, axis=1, keepdims=True)  # unit rows: Gaussian directions
        self.B0[:, :r] = b / np.linalg.norm(b, axis=0, keepdims=True)  # unit columns
        self.target = self.B0 @ self.A0  # C0 = B0 A0, of rank r

    @property
    def learning_coefficient(self) -> float:
        return rrr_learning_coefficient(self.n_in, self.n_out, self.n_hidden, self.true_rank)

    @property
    def multiplicity(self) -> int:
        return rrr_multiplicity(self.n_in, self.n_out, self.n_hidden, self.true_rank)

    def initial_params(self) -> dict[str, np.ndarray]:
        return {"A": self.A0.copy(), "B": self.B0.copy()}

    def loss(self, params: dict, indices: np.ndarray | None = None) -> float:
        residual = np.asarray(params["B"], np.float64) @ np.asarray(params["A"], np.float64) - self.target
        return 0.5 * float(np.sum(residual**2))

    def loss_and_grad(self, params: dict, indices: np.ndarray | None = None) -> tuple[float, dict]:
        a, b = np.asarray(params["A"], np.float64), np.asarray(params["B"], np.float64)
        residual = b @ a - self.target  # D = B A - C0: dL/dA = B^T D, dL/dB = D A^T
        return 0.5 * float(np.sum(residual**2)), {"A": b.T @ residual, "B": residual @ a.T}

    def loss_on_grid(self, points: np.ndarray) -> np.ndarray:
        size_a = self.n_hidden * self.n_in
        a = points[:, :size_a].reshape(-1, self.n_hidden, self.n_in)
        b = points[:, size_a:].reshape(-1, self.n_out, self.n_hidden)
        return 0.5 * np.sum((b @ a - self.target) ** 2, axis=(1, 2))


# --- the tempered target by quadrature ---------------------------------------------------------------


def tempered_llc(objective, nbeta: float, localization: float, half_width: float, n_grid: int = 2001,
                 step_size: float = 0.0, chunk: int = 1 << 17) -> float:
    """nbeta (E_p[L] - L(w*)), p(w) ∝ exp(-U), U = nbeta L(w) + (gamma/2) ||w - w*||^2, w* =
    objective.initial_params(), by the midpoint rule on n_grid points per axis over the box
    w* +- half_width, for objectives with 1 or 2 parameters in all.  The loss comes from
    ``objective.loss_on_grid`` where it has one, else ``objective.loss`` point by point.

    step_size eps > 0 adds the first-order discretisation bias of the chain that estimates it
    (full-batch SGLD, the unadjusted Langevin algorithm; see the module docstring):
    - eps Cov_p(f, Lap U / 4 - |grad U|^2 / 8), f = nbeta (L - L(w*)), with grad U and Lap U from
    central differences of the loss at each grid point (step 1e-4 half_width).

    ValueError where the density at the box's edge is not negligible (above 1e-9 of its
    largest value): widen the box."""
    center = objective.initial_params()
    names = list(center)
    flat_center = np.concatenate([np.ravel(center[k]) for k in names]).astype(np.float64)
    n_params = flat_center.size
    if n_params not in (1, 2):
        raise ValueError(f"tempered_llc integrates over 1 or 2 parameters; this objective has {n_params}")
    n_grid = _count("n_grid", n_grid, 2)
    offsets = half_width * ((2 * np.arange(n_grid) + 1) / n_grid - 1)  # the cells' midpoints
    init_loss = float(objective.loss(center, None))
    h = 1e-4 * half_width  # the finite-difference step of the derivatives (step_size > 0 only)

    def losses(points: np.ndarray) -> np.ndarray:
        if hasattr(objective, "loss_on_grid"):
            return np.asarray(objective.loss_on_grid(points), np.float64)
        out = np.empty(points.shape[0])
        for g, point in enumerate(points):
            params, start = {}, 0
            for k in names:
                size = np.size(center[k])
                params[k] = point[start:start + size].reshape(np.shape(center[k]))
                start += size
            out[g] = objective.loss(params, None)
        return out

    # running sums of w, w f, w c, w f c (w the weights relative to the largest log-weight so far)
    total, log_max, sums, edge_log_max = n_grid**n_params, -np.inf, np.zeros(4), -np.inf
    for start in range(0, total, chunk):
        cells = np.stack(np.unravel_index(np.arange(start, min(total, start + chunk)), (n_grid,) * n_params), axis=1)
        delta = offsets[cells]  # (G, P): w - w*
        loss = losses(flat_center + delta)
        excess = nbeta * (loss - init_loss)
        log_weight = -excess - 0.5 * localization * np.sum(delta**2, axis=1)
        correction = np.zeros_like(excess)
        if step_size > 0:  # c = Lap U / 4 - |grad U|^2 / 8
            grad_sq, laplacian = np.zeros_like(excess), np.zeros_like(excess)
            for i in range(n_params):
                up, down = delta.copy(), delta.copy()
                up[:, i] += h
                down[:, i] -= h
                loss_up, loss_down = losses(flat_center + up), losses(flat_center + down)
                grad_sq += (nbeta * (loss_up - loss_down) / (2 * h) + localization * delta[:, i]) ** 2
                laplacian += nbeta * (loss_up - 2 * loss + loss_down) / h**2 + localization
            correction = laplacian / 4 - grad_sq / 8
        edge = np.any((cells == 0) | (cells == n_grid - 1), axis=1)
        edge_log_max = max(edge_log_max, float(log_weight[edge].max())) if edge.any() else edge_log_max
        chunk_max = float(log_weight.max())
        if chunk_max > log_max:  # rescale the running sums to the new largest log-weight
            sums *= math.exp(log_max - chunk_max) if math.isfinite(log_max) else 0.0
            log_max = chunk_max
        weight = np.exp(log_weight - log_max)
        sums += [weight.sum(), weight @ excess, weight @ correction, weight @ (excess * correction)]
    if edge_log_max - log_max > math.log(1e-9):
        raise ValueError(f"the density at the box's edge is {math.exp(edge_log_max - log_max):.2g} of its largest value: "
                         f"half_width {half_width} is too small for nbeta {nbeta} and localization {localization}")
    mean_excess, mean_correction, mean_product = sums[1:] / sums[0]
    return float(mean_excess - step_size * (mean_product - mean_excess * mean_correction))
