r"""The local learning coefficient (LLC) of a point w*, estimated by SGLD localised at w*.

The LLC lambda(w*) (Lau et al., 2023, "The local learning coefficient") measures how degenerate
the loss is near w*: a regular model with d parameters has lambda = d / 2, a degenerate one
less.  It is estimated from the tempered, localised posterior

    p(w) ∝ exp(-nbeta L(w) - (gamma / 2) ||w - w*||^2)

as  lambda-hat = nbeta (E_p[L] - L(w*)),  with the expectation taken over SGLD chains:

    w_{t+1} = w_t - (eps / 2) [nbeta grad L_{B_t}(w_t) + gamma (w_t - w*)] + N(0, eps I)

(``iclgd.optim.sgld``), w_0 = w*, B_t a minibatch of ``batch_size`` rows drawn with
replacement from the n rows of the data set, eps = step_size, gamma = localization, and
nbeta = n / log n unless given (the names are devinterp's).  L(w*) is measured on the whole data
set.  Each draw t records a *score*:

    "minibatch"  L_{B_t}(w_t), the loss of the draw's own gradient minibatch, before the update
                 (the developmental-landscape paper's choice; no extra pass)
    "paired"     L_{B_t}(w_t) - L_{B_t}(w*) + L(w*): the same minibatch scored at w* too, so the
                 minibatch's own difficulty cancels (one extra forward pass; a smaller spread
                 over chains, the same expectation)
    "full"       L(w_t) on the whole data set (a pass over all n rows per draw)

and the estimate is nbeta (mean over draws and chains of the score - L(w*)), after
``num_burnin_steps`` steps that are run but not counted (default ceil(2 / (eps gamma)): one
relaxation time of w - w* under the localization, two of its variance).

Per-position LLC (``per_position=True``, the transformer): the same chain records the K
per-position losses and lambda-hat_k = nbeta (E[L_k] - L_k(w*)).  Restricted LLC
(``restrict``): only the parameters whose names match move; the others stay at w*.

Diagnostics (``LLCResult.diagnostics``) say whether to trust the number: the MALA acceptance
probability of the proposed steps (scored on one minibatch at both ends of the step: a
Metropolis-adjusted Langevin check of the discretisation, as in Furman & Lau 2024), the mean
distance ||w_t - w*||, the drift of each chain's trace over its last half, and the step at
which the chains' mean trace settled.  ``calibrate`` sweeps step size and nbeta and recommends
a setting from these.

Every chain c draws from its own stream ``iclgd.streams.sgld_rng(seed, c)``: at each step the
minibatch's row indices (when batch_size < n), then the noise's standard normals (one float64
vector over the parameters in their order), so the same seed gives the same estimate on every
backend: host backends advance the chains in lockstep, the jax backend runs them in one vmapped,
compiled program fed the same draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from iclgd.analysis.objective import BackendObjective
from iclgd.sgld import (  # noqa: F401 (re-exported: the estimator's vocabulary)
    SCORES,
    ChainRecords,
    LLCDiverged,
    SGLDSettings,
    default_burnin,
    default_nbeta,
    make_settings,
    mala_acceptance,
    restriction_mask,
    run_host_chains,
)
from iclgd.sgld import _advice, _where

# --- the result -------------------------------------------------------------------------------------------


@dataclass
class LLCResult:
    """An LLC estimate with its traces and diagnostics.

    llc_mean             lambda-hat, the mean over chains of each chain's estimate
    llc_std_error        the standard deviation of the chains' estimates over sqrt(num_chains) (NaN for one chain)
    llc_per_chain        (C,) each chain's nbeta (mean score - L(w*)) over its draws
    init_loss            L(w*) on the whole data set
    loss_trace           (C, draws) the scores (see SCORES); burnin_trace (C, burn-in) the same during burn-in
    llc_trace            (C, draws) nbeta (score - L(w*))
    per_position         per-position results (llc_mean (K,), llc_std_error, llc_per_chain (C, K),
                         init_loss (K,)) or None
    diagnostics          mala_acceptance (mean over chains and draws; per chain), distance (mean ||w - w*||
                         per chain, and at the last draw), drift (each chain's change of llc_trace over its
                         last half, by a least-squares line; its mean and standard error), settling_step
                         (first step, counting burn-in, from which the chains' mean trace stays near
                         llc_mean), settled_in_burnin, flat (the drift is within max(the 95 % t-interval over
                         chains, 5 % of |llc_mean|)), warnings (sentences)
    settings             the SGLDSettings used
    """

    llc_mean: float
    llc_std_error: float
    llc_per_chain: np.ndarray
    init_loss: float
    loss_trace: np.ndarray
    burnin_trace: np.ndarray
    llc_trace: np.ndarray
    per_position: dict | None
    diagnostics: dict
    settings: SGLDSettings
    distance_trace: np.ndarray = field(repr=False, default=None)
    mala_trace: np.ndarray = field(repr=False, default=None)

    def summary(self) -> dict:
        """The numbers without the traces, JSON-ready (strict JSON: NaN, e.g. the standard error of one chain, becomes None)."""
        out = {
            "llc_mean": self.llc_mean, "llc_std_error": self.llc_std_error,
            "llc_per_chain": self.llc_per_chain.tolist(), "init_loss": self.init_loss,
            "settings": {k: getattr(self.settings, k) for k in self.settings.__dataclass_fields__},
            "diagnostics": self.diagnostics,
        }
        if self.per_position is not None:
            out["per_position"] = self.per_position
        return json_ready(out)


def json_ready(value):
    """``value`` with NumPy arrays and scalars as Python lists and numbers, and non-finite floats as
    None (strict JSON has no NaN: e.g. the standard error of one chain)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _chain_stats(per_chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean over chains, standard error over chains) along axis 0."""
    n = per_chain.shape[0]
    se = per_chain.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(per_chain.shape[1:], np.nan)
    return per_chain.mean(axis=0), se


def _drift(trace: np.ndarray) -> np.ndarray:
    """Each row's change over its last half, from a least-squares line: slope * (half's length)."""
    half = trace[:, trace.shape[1] // 2:]
    m = half.shape[1]
    if m < 2:
        return np.zeros(trace.shape[0])
    x = np.arange(m) - (m - 1) / 2
    return (half - half.mean(axis=1, keepdims=True)) @ x / (x @ x) * m


#: two-sided 95 % quantiles of Student's t with 1..10 degrees of freedom (beyond: 1.96 + 2.4 / df, within 0.01)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _t95(degrees_of_freedom: int) -> float:
    return _T95[degrees_of_freedom - 1] if degrees_of_freedom <= len(_T95) else 1.96 + 2.4 / degrees_of_freedom


def _settling_step(full_trace: np.ndarray, target: float, relative: float, num_draws: int) -> tuple[int, float]:
    """(the step from which the chains' mean trace stays within the tolerance of ``target``, in
    20 non-overlapping windows of max(1, S // 20) steps: the end of the last window whose mean
    over chains is outside (0 if none, S if the last one is), the tolerance).

    tolerance = max(relative |target|, 3 noise): noise is the standard error of one window's
    mean over chains, measured from the spread of the (chain, window) means in the last half of
    the draws (taken as stationary; the drift diagnostic checks that), pooled over chains and
    windows so that it is measured with one chain too.  3 is about the two-sided 5 % point for
    20 windows tested at once (Bonferroni: z at 0.05 / 20 = 3.02)."""
    n_chains, n_steps = full_trace.shape
    window = max(1, n_steps // 20)
    n_windows = n_steps // window
    means = full_trace[:, :n_windows * window].reshape(n_chains, n_windows, window).mean(axis=2)  # (C, W)
    first_tail = max(0, (n_steps - num_draws // 2) // window)
    tail = means[:, first_tail:].ravel()
    noise = float(tail.std(ddof=1)) / math.sqrt(n_chains) if tail.size > 1 else 0.0
    tolerance = max(relative * abs(target), 3 * noise, 1e-12)
    outside = np.nonzero(np.abs(means.mean(axis=0) - target) > tolerance)[0]
    if outside.size == 0:
        return 0, tolerance
    return int(min(n_steps, (outside[-1] + 1) * window)), tolerance


def _first_non_finite(records: ChainRecords, settings: SGLDSettings) -> str | None:
    """Where a score (or a per-position score) is first non-finite, as "chain c, draw t", or None."""
    bad = ~np.isfinite(records.score)
    if records.per_position is not None:
        bad |= ~np.isfinite(records.per_position).all(axis=2)
    if not bad.any():
        return None
    steps, chains = np.nonzero(bad.T)  # step-major: the first step, then the first chain at it
    return _where(int(chains[0]), int(steps[0]), settings)


def summarise(records: ChainRecords, settings: SGLDSettings, init_loss: float,
              init_per_position: np.ndarray | None) -> LLCResult:
    """The estimate, its traces and diagnostics from the chains' records."""
    s, burn = settings, settings.num_burnin_steps
    where = _first_non_finite(records, s)
    if where is not None:
        raise LLCDiverged(f"{where}: the score ({s.score}) became non-finite; " + _advice(s))
    full_llc = s.nbeta * (records.score - init_loss)
    llc_trace = full_llc[:, burn:]
    per_chain = llc_trace.mean(axis=1)
    llc_mean, llc_se = _chain_stats(per_chain[:, None])
    llc_mean, llc_se = float(llc_mean[0]), float(llc_se[0])
    per_position = None
    if records.per_position is not None:
        pp_chain = s.nbeta * (records.per_position[:, burn:] - init_per_position).mean(axis=1)  # (C, K)
        pp_mean, pp_se = _chain_stats(pp_chain)
        per_position = {"llc_mean": pp_mean, "llc_std_error": pp_se, "llc_per_chain": pp_chain,
                        "init_loss": np.asarray(init_per_position, dtype=np.float64)}
    drift = _drift(llc_trace)
    drift_mean, drift_se = _chain_stats(drift[:, None])
    drift_mean, drift_se = float(drift_mean[0]), float(drift_se[0])
    settling, tolerance = _settling_step(full_llc, llc_mean, 0.05, s.num_draws)
    # flat: the mean drift is within the 95 % t-interval over chains (C - 1 degrees of freedom), or within 5 % of the estimate
    spread = _t95(s.num_chains - 1) * drift_se if math.isfinite(drift_se) else 0.0
    flat = abs(drift_mean) <= max(spread, 0.05 * abs(llc_mean))
    mala = records.mala[:, burn:]
    has_mala = np.isfinite(mala).any()
    mala_chain = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in mala])
    distance = records.distance[:, burn:]
    warnings = []
    if settling >= s.num_steps:
        warnings.append(f"the chains never settled: their mean trace does not stay within {tolerance:.3g} of the "
                        f"estimate up to the last step (burn-in {burn}, {s.num_draws} draws): run more burn-in steps and draws")
    elif settling > burn:
        warnings.append(f"the chains were still settling after burn-in (their mean trace stays within {tolerance:.3g} of "
                        f"the estimate only from step {settling}; burn-in was {burn}): run more burn-in steps")
    if not flat:
        warnings.append(f"the traces drift over their last half by {drift_mean:.3g} +- {drift_se:.3g}: run longer chains")
    if has_mala and np.nanmean(mala) < 0.9:
        warnings.append(f"MALA acceptance {np.nanmean(mala):.3f} < 0.9: step_size {s.step_size:g} is too large for this "
                        "nbeta (the discretisation biases the estimate); try calibrate")
    if llc_mean < 0:
        warnings.append("the estimate is negative: w* is not a local minimum of the loss (or the chains found lower loss nearby)")
    diagnostics = {
        "mala_acceptance": float(np.nanmean(mala)) if has_mala else None,
        "mala_acceptance_per_chain": mala_chain if has_mala else None,
        "distance_mean_per_chain": distance.mean(axis=1),
        "distance_last": distance[:, -1],
        "drift_per_chain": drift, "drift_mean": drift_mean, "drift_std_error": drift_se,
        "settling_step": settling, "settled_in_burnin": settling <= burn, "flat": bool(flat),
        "warnings": warnings,
    }
    return LLCResult(llc_mean, llc_se, per_chain, float(init_loss), records.score[:, burn:], records.score[:, :burn],
                     llc_trace, per_position, diagnostics, settings, records.distance, records.mala)


# --- the estimator ----------------------------------------------------------------------------------------


def estimate_llc(backend, cfg, params: dict, data, *, step_size: float = 1e-4, nbeta: float | None = None,
                 localization: float = 100.0, num_chains: int = 4, num_draws: int = 500,
                 num_burnin_steps: int | None = None, batch_size: int | None = 1024, seed: int = 0,
                 restrict=None, per_position: bool = False, score: str = "minibatch", mala_every: int = 1) -> LLCResult:
    """lambda-hat at ``params`` (w*) of the model ``cfg`` computed by ``backend`` (an
    ``iclgd.backends`` backend or its name) on the data set ``data`` (a batch of tasks of cfg's
    family, or a (tokens, targets) pair; n = its number of rows).  See the module docstring for
    the SGLD step, the scores and the defaults: nbeta = n / log n, num_burnin_steps =
    ceil(2 / (step_size localization)), batch_size min(1024, n) rows per step (None: all).
    ``per_position`` (the transformer) adds the per-position LLCs; ``restrict`` moves only some
    parameters (see ``restriction_mask``).  Raises LLCDiverged naming the chain and the draw if
    a loss, gradient or parameter becomes non-finite."""
    from iclgd.backends import get_backend

    if isinstance(backend, str):
        backend = get_backend(backend)
    objective = BackendObjective(backend, cfg, data)
    center = objective.check_params(params)
    return estimate_llc_of(objective, center, step_size=step_size, nbeta=nbeta, localization=localization,
                           num_chains=num_chains, num_draws=num_draws, num_burnin_steps=num_burnin_steps,
                           batch_size=batch_size, seed=seed, restrict=restrict, per_position=per_position,
                           score=score, mala_every=mala_every, runner=getattr(backend, "sgld_chains", None))


def estimate_llc_of(objective, params: dict, *, step_size: float = 1e-4, nbeta: float | None = None,
                    localization: float = 100.0, num_chains: int = 4, num_draws: int = 500,
                    num_burnin_steps: int | None = None, batch_size: int | None = 1024, seed: int = 0,
                    restrict=None, per_position: bool = False, score: str = "minibatch", mala_every: int = 1,
                    runner=None) -> LLCResult:
    """``estimate_llc`` for any objective (``iclgd.analysis.objective``; e.g. the models of
    known learning coefficient in ``iclgd.analysis.known_lc``), its chains on the host unless a
    ``runner`` (a backend's compiled chains) is given."""
    n = objective.n_samples
    if batch_size is not None and isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
        batch_size = None if batch_size >= n else batch_size
    settings = make_settings(n, step_size=step_size, nbeta=nbeta, localization=localization, num_chains=num_chains,
                             num_draws=num_draws, num_burnin_steps=num_burnin_steps, batch_size=batch_size, seed=seed,
                             score=score, mala_every=mala_every)
    if per_position and getattr(objective, "n_positions", None) is None:
        raise ValueError("per_position needs a model with a loss at every position (iclgd.TransformerConfig); "
                         "this one predicts a single query")
    if hasattr(objective, "check_params"):  # a model's objective: the parameters in its layout and dtype
        params = objective.check_params(params)
    center = {name: np.asarray(p) for name, p in params.items()}
    mask = restriction_mask(center, restrict)
    if per_position:
        init_per_position = np.asarray(objective.per_position_loss(center, None), dtype=np.float64)
        init_loss = float(np.mean(init_per_position))
    else:
        init_per_position, init_loss = None, float(objective.loss(center, None))
    if not math.isfinite(init_loss):
        raise LLCDiverged(f"the loss at w* is {init_loss} on the data set: w* or the data are not usable")
    chains = runner(objective, center, settings, mask, per_position, init_loss, init_per_position) if runner else None
    if chains is None:
        chains = run_host_chains(objective, center, settings, mask, per_position, init_loss, init_per_position)
    return summarise(chains, settings, init_loss, init_per_position)
