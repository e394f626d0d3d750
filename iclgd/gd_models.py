r"""GD and GD++ with learned rates: the paper's trained baselines, as models the training loop fits.

A ``LearnedGDConfig`` model is K = ``n_layers`` steps of GD (``variant="gd"``) or GD++
(``variant="gdpp"``) whose rates are its parameters:

    "eta"   (L,)   the label rate of every step         L = 1 if tied (one rate shared by all
    "gamma" (L,)   the input rate (GD++ only)                 steps), else L = K (one per step)

Step l maps every token j from the step's old tokens (``iclgd.baselines.gdpp_predict``):

    x_j <- x_j - (gamma_l / N) sum_i (x_i . x_j) x_i,      y_j <- y_j - (eta_l / N) sum_i (x_i . x_j) y_i

and the prediction is minus the query's final y-slot.  The model *is* a constrained LSA: layer l
carries the weights of ``iclgd.gdpp_construction`` with (eta_l, gamma_l), which are affine in the
rates, with

    W_o[l][0, 0, d]      = eta_l / N                 (value column 0 -> y-slot)
    W_o[l][0, 1 + a, a]  = -gamma_l / N,  a < d      (value columns 1..d -> x-slots)

and every other entry fixed.  So any backend's LSA gradient gives the rates' gradient by the
chain rule (``pullback``):

    dL/d eta_l   =  (1/N) dL/dW_o[l][0, 0, d]
    dL/d gamma_l = -(1/N) sum_a dL/dW_o[l][0, 1 + a, a]

(summed over the layers that share a rate when tied).  This is how the baselines are trained
"through the same training loop": same task stream, same Adam, same checkpoints.

Init: rates ~ N(0, init_scale), drawn from the run's init stream.  Not all equal on purpose: the
K-step GD prediction ``(I - prod_t (I - eta_t H)) H^-1 b`` is symmetric in the per-step rates, so
from equal rates gradient descent would keep them equal forever.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclgd import limits
from iclgd._checks import DRAW_BOUND, cast_finite, finite_array, finite_float, float_dtype, largest, positive_int
from iclgd.construct import gdpp_construction
from iclgd.models import LSAConfig, layer_prefixes
from iclgd.models import param_shapes as lsa_param_shapes
from iclgd.tasks import as_generator

VARIANTS = ("gd", "gdpp")


@dataclass(frozen=True)
class LearnedGDConfig:
    """K steps of GD or GD++ with learned rates (see the module doc).

    d:         input dimension
    n_context: N (the LSA form's output weights are rate / N)
    n_layers:  number of steps K
    tied:      one rate (pair) shared by every step, else one per step
    variant:   "gd" (learn eta) or "gdpp" (learn eta and gamma)
    dtype:     "float64" or "float32"
    """

    d: int
    n_context: int
    n_layers: int = 1
    tied: bool = False
    variant: str = "gd"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("d", "n_context"):
            set_(self, name, positive_int(name, getattr(self, name)))
        set_(self, "n_layers", positive_int("n_layers", self.n_layers, maximum=limits.MAX_LAYERS))
        if not isinstance(self.tied, (bool, np.bool_)):
            raise ValueError(f"tied must be True or False; got {self.tied!r}")
        set_(self, "tied", bool(self.tied))
        if not isinstance(self.variant, str) or self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}; got {self.variant!r}")
        set_(self, "dtype", float_dtype("dtype", self.dtype).name)
        self.lsa_config()  # the LSA form must be buildable too (its size is checked against the memory limit)

    @property
    def family(self) -> str:
        """The [model] family name in a run config: "gd" or "gdpp"."""
        return self.variant

    @property
    def n_rates(self) -> int:
        """L: 1 when tied, else one per step."""
        return 1 if self.tied else self.n_layers

    def lsa_config(self) -> LSAConfig:
        """The LSA this model constrains: one head, key size d + 1, value size d + 1, no query attention."""
        return LSAConfig(d=self.d, n_layers=self.n_layers, n_heads=1, key_size=self.d + 1, value_size=self.d + 1,
                         tied=self.tied, include_query=False, n_context=self.n_context, dtype=self.dtype)


def _check_config(cfg: object) -> LearnedGDConfig:
    if not isinstance(cfg, LearnedGDConfig):
        raise ValueError(f"cfg must be an iclgd.LearnedGDConfig; got {type(cfg).__name__}")
    return cfg


def param_shapes(cfg: LearnedGDConfig) -> dict[str, tuple[int, ...]]:
    names = ("eta", "gamma") if cfg.variant == "gdpp" else ("eta",)
    return {name: (cfg.n_rates,) for name in names}


def init_params(cfg: LearnedGDConfig, seed: int | np.random.Generator = 0, scale: float = 0.002) -> dict[str, np.ndarray]:
    """Every rate ~ N(0, scale) (variance ``scale``), in ``cfg.dtype``."""
    rng = as_generator(seed)
    scale = check_init_scale(cfg, scale)
    return {name: (np.sqrt(scale) * rng.standard_normal(shape)).astype(cfg.dtype) for name, shape in param_shapes(cfg).items()}


def check_init_scale(cfg: LearnedGDConfig, scale: object, name: str = "scale") -> float:
    """``scale`` as a float, or ValueError unless it is finite, >= 0 and its draws fit ``cfg.dtype``."""
    _check_config(cfg)
    scale = finite_float(name, scale, nonnegative=True)
    if DRAW_BOUND * np.sqrt(scale) > largest(cfg.dtype):
        raise ValueError(f"{name} = {scale:.3g} is too large for {cfg.dtype}: rates sqrt({name}) N(0, 1) can reach "
                         f"{DRAW_BOUND * np.sqrt(scale):.3g}, above the largest {cfg.dtype} {largest(cfg.dtype):.3g}")
    return scale


def check_params(cfg: LearnedGDConfig, params: object) -> dict[str, np.ndarray]:
    """The rates as finite arrays of the right names and shapes that fit ``cfg.dtype``; ValueError otherwise."""
    _check_config(cfg)
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of rates {list(param_shapes(cfg))}; got {type(params).__name__}")
    shapes = param_shapes(cfg)
    if set(params) != set(shapes):
        raise ValueError(f"params must have exactly the keys {sorted(shapes)}; got {sorted(params, key=repr)}")
    checked = {}
    for name, shape in shapes.items():
        value = finite_array(f"params[{name!r}]", params[name])
        if value.shape != shape:
            raise ValueError(f"params[{name!r}] must have shape {shape}; got {value.shape}")
        cast_finite(f"params[{name!r}]", value, cfg.dtype)  # the rates must fit the model's dtype
        checked[name] = value
    return checked


def _rate_index(cfg: LearnedGDConfig) -> list[tuple[str, int]]:
    """(LSA prefix, rate index) of every distinct LSA weight set."""
    prefixes = list(dict.fromkeys(layer_prefixes(cfg.lsa_config())))
    return [(prefix, index) for index, prefix in enumerate(prefixes)]


def rates(cfg: LearnedGDConfig, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(eta, gamma) per step, each (K,) float64 (gamma = 0 for plain GD)."""
    params = check_params(cfg, params)
    eta = np.broadcast_to(params["eta"].astype(np.float64), (cfg.n_layers,)).copy()
    gamma = params.get("gamma", np.zeros(cfg.n_rates))
    return eta, np.broadcast_to(gamma.astype(np.float64), (cfg.n_layers,)).copy()


def to_lsa_params(cfg: LearnedGDConfig, params: dict) -> dict[str, np.ndarray]:
    """The LSA weights (of ``cfg.lsa_config()``) that compute this model."""
    params = check_params(cfg, params)
    lsa_cfg = cfg.lsa_config()
    lsa = gdpp_construction(lsa_cfg, eta=0.0, gamma=0.0)
    d, n = cfg.d, cfg.n_context
    for prefix, index in _rate_index(cfg):
        w_o = lsa[f"{prefix}.w_o"]
        w_o[0, 0, d] = params["eta"][index] / n
        if "gamma" in params:
            w_o[0, 1 : d + 1, :d] = -(params["gamma"][index] / n) * np.eye(d)
    return lsa


def pullback(cfg: LearnedGDConfig, lsa_grads: dict) -> dict[str, np.ndarray]:
    """The rates' gradient from the LSA weights' gradient (chain rule, module doc).  ``lsa_grads``
    must hold the W_o gradient of every weight set of ``cfg.lsa_config()``; ValueError otherwise."""
    d, n = cfg.d, cfg.n_context
    for name, shape in lsa_param_shapes(cfg.lsa_config()).items():
        if name.endswith(".w_o") and (name not in lsa_grads or np.shape(lsa_grads[name]) != shape):
            got = f"shape {np.shape(lsa_grads[name])}" if name in lsa_grads else "no such key"
            raise ValueError(f"lsa_grads[{name!r}] must have shape {shape} (the LSA form of this model: "
                             f"{'tied' if cfg.tied else 'untied'}, {cfg.n_layers} layers); got {got}")
    grads = {name: np.zeros(shape, cfg.dtype) for name, shape in param_shapes(cfg).items()}
    for prefix, index in _rate_index(cfg):
        g = np.asarray(lsa_grads[f"{prefix}.w_o"], dtype=np.float64)
        grads["eta"][index] = g[0, 0, d] / n
        if "gamma" in grads:
            grads["gamma"][index] = -np.trace(g[0, 1 : d + 1, :d]) / n
    return grads


def as_lsa(cfg, params: dict) -> tuple[LSAConfig, dict[str, np.ndarray]]:
    """Any model as an LSA: an LSAConfig model as it is, a LearnedGDConfig one through its construction."""
    if isinstance(cfg, LearnedGDConfig):
        return cfg.lsa_config(), to_lsa_params(cfg, params)
    if isinstance(cfg, LSAConfig):
        return cfg, params
    raise ValueError(f"expected an LSAConfig or a LearnedGDConfig; got {type(cfg).__name__}")
