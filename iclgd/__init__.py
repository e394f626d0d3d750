"""iclgd: transformers learn in context by gradient descent, executable and checkable.

Public API (the design notes; conventions in docs/conventions.md): tasks, the LSA model, backends, the GD and GD++ constructions and baselines,
and GD / GD++ with learned rates (``LearnedGDConfig``, a model the training loop fits); the
developmental-landscape transformer (``TransformerConfig``) and its noisy regression tasks
(``NoisyRegressionTask``).
Importing iclgd imports NumPy only; optional engines load when their backend is asked for.
"""
from iclgd import baselines
from iclgd.backends import available_backends, get_backend
from iclgd.construct import gd_construction, gdpp_construction, with_initial_guess
from iclgd.gd_models import LearnedGDConfig
from iclgd.models import LSAConfig, TransformerConfig, init_params, param_shapes, zero_params
from iclgd.tasks import Batch, LinearRegressionTask, NoisyRegressionTask

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "LSAConfig",
    "LearnedGDConfig",
    "LinearRegressionTask",
    "NoisyRegressionTask",
    "TransformerConfig",
    "available_backends",
    "baselines",
    "gd_construction",
    "gdpp_construction",
    "get_backend",
    "init_params",
    "param_shapes",
    "with_initial_guess",
    "zero_params",
]
