r"""What the paper's claims rest on, in closed form: one GD step's expected loss, the spectrum
of a context, and how a trained layer reads as a GD (or GD++) construction.

The task family of iclgd.tasks without noise: w ~ N(0, I_d), inputs with i.i.d. coordinates,
y = w . x; N context pairs and a query; GD on ``L(W) = 1/(2N) sum_i (W x_i - y_i)^2`` from W0 = 0.

**One GD step.**  Its prediction is linear in the rate, ``yhat(eta) = eta p`` with
``p = (1/N) sum_i y_i (x_i . x_q)``.  For centred coordinates with ``s2 = E x^2`` and
``m4 = E x^4`` the expected squared error is a parabola in eta,

    MSE(eta) = A eta^2 - 2 B eta + C,
    A = (d/N) s2 (m4 + (N + d - 2) s2^2),   B = d s2^2,   C = d s2 = E y_q^2,

minimised at ``eta* = B / A`` (``iclgd.baselines.one_step_optimum`` for the uniform law).  The
moments of the input laws (iclgd.tasks.inputs) at range a: uniform U(-a, a) has s2 = a^2/3 and
m4 = a^4/5; the gaussian and laplace laws at the same norm have s2 = a^2/3 and m4 = 3 s2^2 and
6 s2^2.  The exponential law (a/sqrt 6) Exp(1) is not centred: its second-moment matrix
``E[x x^T] = s^2 (I + 1 1^T)``, s^2 = a^2/6, has the top eigenvalue (d + 1) a^2/6 along the
all-ones direction, against a^2/3 in every direction for the centred laws.

On sampled tasks the loss at any eta follows from p and y alone, and the sample's best rate is
``eta_hat = sum_b p_b y_b / sum_b p_b^2`` (what iclgd.evaluate.tune_gd_eta computes), a ratio of
means whose standard error the delta method gives: the standard deviation of the influence values
``(p_b y_b - eta_hat p_b^2) / mean(p^2)`` over sqrt(B).

**GD++, token by token.**  One GD++ step moves every token j, the N context tokens and the query
alike, from the step's old tokens: ``x_j <- x_j - (gamma/N) sum_i (x_i . x_j) x_i`` and
``y_j <- y_j - (eta/N) sum_i (x_i . x_j) y_i`` (sums over the context tokens i); the prediction is
minus the query's y-slot at the end, and gamma = 0 is GD.  One LSA head does that step with the
products ``W_QK = blockdiag(I_d, 0)`` and ``W_OV = blockdiag(-(gamma/N) I_d, -eta/N)``.

**K steps of GD and GD++, in the eigenbasis of a context.**  With ``Sigma = (1/N) sum_i x_i
x_i^T = V diag(lam) V^T``, a GD++ step (iclgd.baselines.gdpp_predict) maps the inputs to
``(I - gamma Sigma) x`` and leaves the eigenvectors alone, moving each eigenvalue to
``lam (1 - gamma lam)^2``; K steps leave, along an eigenvector, the fraction

    m(lam) = prod_{t < K} (1 - eta lam_t),    lam_0 = lam,  lam_{t+1} = lam_t (1 - gamma lam_t)^2

of w unlearnt (gamma = 0: GD's ``(1 - eta lam)^K``), so the prediction is
``w . x_q - x_q^T V diag(m(lam)) V^T w`` and, averaged over w ~ N(0, I) and a query with
``E x_q x_q^T = s2 I``, the context's expected half-MSE is ``(s2 / 2) sum_k m(lam_k)^2``.

**Reading a trained layer.**  A layer depends on its weights through the products
``W_QK = W_q W_k^T`` and ``W_OV = W_v W_o`` (iclgd.interpolate.effective_matrices), up to
``(c W_QK, W_OV / c)``.  The GD construction has ``W_QK = c I`` on the x-block and a single
``-g`` in the (y, y) corner of ``W_OV``: one GD step with ``eta = N c g``.  For one layer only the
x-rows of W_QK and the y-column of W_OV reach the prediction.  The GD++ construction adds
``-g_x I`` on the x-block of W_OV (``gamma = N c g_x``, ``eta = N c g_y``), and in a deeper model every
entry matters.  A reading gives those scales and the largest entry outside the pattern (also as a
fraction of the pattern's own scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import baselines, metrics
from iclgd.tasks import LinearRegressionTask, x_distribution_name

#: m4 / s2^2 of the centred input laws (iclgd.tasks.inputs): U(-a, a) has a^4/5 / (a^2/3)^2 = 9/5
FOURTH_MOMENT_RATIO = {"gaussian": 3.0, "laplace": 6.0}


@dataclass(frozen=True)
class OneStepParabola:
    """MSE(eta) = A eta^2 - 2 B eta + C of one GD step from 0 (module doc)."""

    a: float  # A, the curvature
    b: float  # B
    c: float  # C = E y_q^2, the loss of predicting 0 (as an MSE)

    @property
    def eta(self) -> float:
        """The best rate, B / A."""
        return self.b / self.a

    def half_mse(self, eta: float) -> float:
        """The expected half-MSE at rate ``eta``: (A eta^2 - 2 B eta + C) / 2."""
        return 0.5 * (self.a * eta**2 - 2 * self.b * eta + self.c)


def one_step_parabola(d: int, n_context: int, s2: float, m4: float) -> OneStepParabola:
    """The parabola for i.i.d. centred input coordinates with E x^2 = s2, E x^4 = m4 (module doc)."""
    return OneStepParabola(a=(d / n_context) * s2 * (m4 + (n_context + d - 2) * s2**2), b=d * s2**2, c=d * s2)


def centred_moments(distribution: str, x_scale: float) -> tuple[float, float]:
    """(s2, m4) = (E x^2, E x^4) of one input coordinate of a centred law at range ``x_scale``:
    uniform (a^2/3, a^4/5), gaussian (a^2/3, 3 s2^2), laplace (a^2/3, 6 s2^2).  The exponential
    law is not centred and has no such pair here (ValueError)."""
    name = x_distribution_name(distribution)
    s2 = x_scale**2 / 3
    if name == "uniform":
        return s2, x_scale**4 / 5
    if name not in FOURTH_MOMENT_RATIO:
        raise ValueError(f"the {name} law is not centred: one GD step's loss under it is not the parabola of "
                         f"centred moments; centred laws: uniform, {', '.join(FOURTH_MOMENT_RATIO)}")
    return s2, FOURTH_MOMENT_RATIO[name] * s2**2


def top_second_moment(distribution: str, d: int, x_scale: float) -> float:
    """The largest eigenvalue of E[x x^T] for inputs x in R^d of a law at range ``x_scale``:
    (d + 1) a^2/6 for the exponential law (along the all-ones direction), a^2/3 for the others."""
    if x_distribution_name(distribution) == "exponential":
        return (d + 1) * x_scale**2 / 6
    return x_scale**2 / 3


@dataclass(frozen=True)
class OneStepSample:
    """One GD step from 0 on sampled tasks: the prediction per unit rate p (B,) and the target y
    (B,); the step's prediction at rate eta is eta p."""

    per_unit_eta: np.ndarray
    targets: np.ndarray

    @classmethod
    def draw(cls, task: LinearRegressionTask, n_tasks: int, rng: np.random.Generator, chunk: int = 50_000) -> "OneStepSample":
        """``n_tasks`` tasks drawn from ``rng`` in chunks of at most ``chunk`` tasks, one chunk after
        another (to bound memory; each chunk draws its weights, then its inputs, so which tasks a
        seed gives depends on ``chunk``)."""
        per_unit_eta, targets = [], []
        for start in range(0, n_tasks, chunk):
            batch = task.sample(min(chunk, n_tasks - start), rng)
            per_unit_eta.append(baselines.gd_predict(batch.tokens, eta=1.0, steps=1))
            targets.append(batch.targets)
        return cls(np.concatenate(per_unit_eta), np.concatenate(targets))

    def half_mse(self, eta: float) -> metrics.Estimate:
        """The half-MSE of one step at rate ``eta`` over the sample."""
        return metrics.estimate(metrics.half_squared_errors(eta * self.per_unit_eta, self.targets))

    def best_eta(self) -> metrics.Estimate:
        """The sample's best rate sum p y / sum p^2, with its delta-method standard error."""
        p, y = self.per_unit_eta, self.targets
        eta_hat = float(np.dot(p, y) / np.dot(p, p))
        influence = (p * y - eta_hat * p * p) / np.mean(p * p)
        return metrics.Estimate(eta_hat, float(influence.std(ddof=1) / np.sqrt(p.size)))


def gdpp_token_by_token(tokens: np.ndarray, eta: float, gamma: float, steps: int) -> float:
    """K = ``steps`` GD++ steps from W0 = 0 on one task's tokens (N + 1, d + 1), written out token
    by token and sum by sum (the definition; iclgd.baselines.gdpp_predict is its vectorised form):
    every token j, the N context tokens and the query alike, moves by
    -(1/N) sum_i (x_i . x_j) (gamma x_i, eta y_i), the sum over the N context tokens i of the
    step's old tokens.  The prediction is minus the query's y-slot at the end."""
    e = np.array(tokens, dtype=np.float64)
    n, d = e.shape[0] - 1, e.shape[1] - 1
    for _ in range(steps):
        new = e.copy()
        for j in range(n + 1):  # context tokens 0..N-1, the query N
            moved_x, moved_y = np.zeros(d), 0.0
            for i in range(n):  # keys and values: the context tokens only
                similarity = float(np.dot(e[i, :d], e[j, :d]))  # x_i . x_j
                moved_x += similarity * e[i, :d]
                moved_y += similarity * e[i, d]
            new[j, :d] = e[j, :d] - (gamma / n) * moved_x
            new[j, d] = e[j, d] - (eta / n) * moved_y
        e = new
    return float(-e[n, d])


def context_spectrum(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (B, d), ascending, and eigenvectors (B, d, d) of every context's input
    covariance Sigma = (1/N) sum_i x_i x_i^T."""
    x, _, _ = baselines.split_tokens(tokens)
    return np.linalg.eigh(np.einsum("bni,bnj->bij", x, x) / x.shape[1])


def error_factors(lam: np.ndarray, eta: float, gamma: float, steps: int) -> np.ndarray:
    """m(lam) = prod_t (1 - eta lam_t), lam_{t+1} = lam_t (1 - gamma lam_t)^2: the fraction of w's
    component along an eigenvector of Sigma (eigenvalue lam) that ``steps`` GD++ steps leave
    unlearnt; gamma = 0 gives GD's (1 - eta lam)^K."""
    factor, curvature = np.ones_like(lam), np.array(lam, dtype=np.float64)
    for _ in range(steps):
        factor = factor * (1.0 - eta * curvature)
        curvature = curvature * (1.0 - gamma * curvature) ** 2
    return factor


def spectral_half_mse(lam: np.ndarray, eta: float, gamma: float, steps: int, s2: float) -> np.ndarray:
    """Per context (eigenvalues ``lam`` (..., d)), the half-MSE of ``steps`` GD++ steps averaged
    over w ~ N(0, I) and a query with E x_q x_q^T = s2 I: (s2 / 2) sum_k m(lam_k)^2."""
    return 0.5 * s2 * np.sum(error_factors(lam, eta, gamma, steps) ** 2, axis=-1)


def gdpp_eigenbasis_predict(tokens: np.ndarray, weights: np.ndarray, eta: float, gamma: float, steps: int) -> np.ndarray:
    """The prediction (B,) of ``steps`` GD++ steps from 0 written in each context's eigenbasis,
    w . x_q - x_q^T V diag(m(lam)) V^T w, for noise-free tasks with weights ``weights`` (B, d)."""
    lam, vectors = context_spectrum(tokens)
    _, _, x_query = baselines.split_tokens(tokens)
    factors = error_factors(lam, eta, gamma, steps)
    return np.einsum("bd,bd->b", weights, x_query) - np.einsum("bi,bik,bk,bjk,bj->b", x_query, vectors, factors, vectors, weights)


def gdpp_products(d: int, n_context: int, eta: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """The products (W_QK, W_OV), each (d + 1, d + 1), of the layer that does one GD++ step
    (iclgd.gdpp_construction; gamma = 0: iclgd.gd_construction): W_QK = blockdiag(I_d, 0) and
    W_OV = blockdiag(-(gamma/N) I_d, -eta/N), so that context token i sends -(1/N)(gamma x_i, eta y_i),
    weighted by x_i . x_j, to every token j."""
    qk, ov = np.zeros((d + 1, d + 1)), np.zeros((d + 1, d + 1))
    qk[:d, :d] = np.eye(d)
    ov[:d, :d], ov[d, d] = -(gamma / n_context) * np.eye(d), -eta / n_context
    return qk, ov


@dataclass(frozen=True)
class GDLayerReading:
    """A one-layer model's products read as the GD construction (module doc): W_QK's x-rows =
    c (I, 0), W_OV's y-column = (0, -g); ``other_qk`` and ``other_ov`` are the largest entries of
    those rows and that column outside the pattern."""

    c: float
    g: float
    other_qk: float
    other_ov: float

    @property
    def product(self) -> float:
        """c g, the layer's eta / N (the part the symmetry leaves fixed)."""
        return self.c * self.g

    def eta(self, n_context: int) -> float:
        """The layer's own rate N c g."""
        return n_context * self.product


def read_gd_layer(qk: np.ndarray, ov: np.ndarray) -> GDLayerReading:
    """Read one head's products ``qk`` = W_q W_k^T and ``ov`` = W_v W_o (D, D), D = d + 1: c the
    mean diagonal of W_QK's x-block, g = -W_OV[y, y]."""
    d = qk.shape[0] - 1
    c = float(np.trace(qk[:d, :d]) / d)
    other_qk = qk[:d, :].copy()
    other_qk[:, :d] -= c * np.eye(d)
    return GDLayerReading(c=c, g=float(-ov[d, d]), other_qk=float(np.max(np.abs(other_qk))),
                          other_ov=float(np.max(np.abs(ov[:d, d]))))


@dataclass(frozen=True)
class GDppLayerReading:
    """A recurrent layer's products read as the GD++ construction (module doc): W_QK = c blockdiag(I, 0),
    W_OV = blockdiag(-g_x I, -g_y).  ``other_qk``: W_QK's largest entry outside c I on the
    x-block; ``other_ov_x``: the largest entry W_OV writes into the x-slots outside -g_x I;
    ``other_ov_y``: the largest x-entry of W_OV's y-column."""

    c: float
    g_x: float
    g_y: float
    other_qk: float
    other_ov_x: float
    other_ov_y: float

    def eta(self, n_context: int) -> float:
        """GD++'s label rate N c g_y."""
        return n_context * self.c * self.g_y

    def gamma(self, n_context: int) -> float:
        """GD++'s input rate N c g_x."""
        return n_context * self.c * self.g_x

    @property
    def relative_other(self) -> tuple[float, float, float]:
        """Each largest entry outside the pattern as a fraction of its own scale:
        (other_qk / |c|, other_ov_x / |g_x|, other_ov_y / |g_y|)."""
        return self.other_qk / abs(self.c), self.other_ov_x / abs(self.g_x), self.other_ov_y / abs(self.g_y)


def read_gdpp_layer(qk: np.ndarray, ov: np.ndarray) -> GDppLayerReading:
    """Read one head's products (D, D), D = d + 1: c and -g_x the mean diagonals of the x-blocks
    of W_QK and W_OV, g_y = -W_OV[y, y]."""
    d = qk.shape[0] - 1
    c = float(np.trace(qk[:d, :d]) / d)
    g_x = float(-np.trace(ov[:d, :d]) / d)
    other_qk = qk.copy()
    other_qk[:d, :d] -= c * np.eye(d)
    ov_x = ov.copy()  # what is written into the x-slots: all but the last column
    ov_x[:d, :d] -= -g_x * np.eye(d)
    return GDppLayerReading(c=c, g_x=g_x, g_y=float(-ov[d, d]), other_qk=float(np.max(np.abs(other_qk))),
                            other_ov_x=float(np.max(np.abs(ov_x[:, :d]))), other_ov_y=float(np.max(np.abs(ov[:d, d]))))
