"""Which module describes which model family: its config class, parameter shapes and input checks.

Every model module offers the same functions, so code that serves several families (the
backend contract, checkpoints, the training loop) looks the module up here instead of
branching on the config's type:

    param_shapes(cfg)                        -> {name: shape}
    check_params(cfg, params)                -> params in cfg.dtype (ValueError naming the problem)
    check_tokens(cfg, tokens)                -> tokens in cfg.dtype
    check_targets(cfg, targets, batch_size)  -> targets in cfg.dtype
    check_outputs(cfg, what, outputs, params, tokens, targets=None) -> outputs, or ValueError on overflow

    lsa           iclgd.models.lsa           LSAConfig: the LSA of von Oswald et al.
    transformer   iclgd.models.transformer   TransformerConfig: the causal transformer of Hoogland et al.
"""
from __future__ import annotations

from types import ModuleType

from iclgd.models import lsa, transformer

MODULES: dict[type, ModuleType] = {lsa.LSAConfig: lsa, transformer.TransformerConfig: transformer}


def module_of(cfg: object) -> ModuleType:
    """The model module of ``cfg``'s family, or ValueError naming the config classes iclgd knows."""
    module = MODULES.get(type(cfg))
    if module is None:
        known = " or ".join(f"iclgd.{cls.__name__}" for cls in MODULES)
        raise ValueError(f"cfg must be an {known}; got {type(cfg).__name__}")
    return module


def param_shapes(cfg: object) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape for a config of any family."""
    return module_of(cfg).param_shapes(cfg)
