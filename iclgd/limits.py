r"""Limits before allocation: work that cannot fit in memory is refused before it starts.

Every size that passes validation must be computable.  The entry points that allocate in
proportion to their arguments (``LinearRegressionTask.sample``, the backends' passes, a run
config's training step, the command line's ``--seeds``, ``--layers`` and ``--val-tasks``)
estimate the bytes they need from the shapes alone and call ``check_bytes``, which raises
``ValueError`` naming the argument, the estimate and the limit, before anything is allocated
or written.

The limit is ``DEFAULT_FRACTION`` (50 %) of the machine's physical memory
(``os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")``; ``FALLBACK_PHYSICAL_BYTES``
where the system cannot tell), or the number of bytes in the environment variable
``ICLGD_MEMORY_LIMIT_BYTES`` when it is set (tests set it low; a big machine may set it high).

The estimates are upper estimates of NumPy's peak, derived from the shapes that the code
allocates (``iclgd.backends.numpy_backend`` for the model passes, ``iclgd.tasks.linear`` for
sampling), and checked against ``tracemalloc`` by tests/test_fuzz.py.  The compiled engines
(numba, jax) need less for the same call; the oracle's estimate bounds them too.

Besides memory, two counts are bounded outright: a model's depth (``MAX_LAYERS``; each layer
is a Python-level step of every engine) and the steps of the GD baselines (``MAX_GD_STEPS``).

Nothing here imports the rest of iclgd: the estimators read sizes off configs (duck-typed), so
every module may use them.
"""
from __future__ import annotations

import os

#: The environment variable that sets the limit in bytes (a positive integer).
ENV_VAR = "ICLGD_MEMORY_LIMIT_BYTES"

#: The share of physical memory one call or run may plan to use.
DEFAULT_FRACTION = 0.5

#: Physical memory assumed where os.sysconf cannot tell (8 GiB).
FALLBACK_PHYSICAL_BYTES = 8 * 2**30

#: The deepest model (n_layers) and the most GD steps a baseline takes.
MAX_LAYERS = 10_000
MAX_GD_STEPS = 10_000

#: File descriptors kept free for the interpreter and the engines when many runs hold one each.
RESERVED_FILES = 64

FLOAT64 = 8


# --- the limit ------------------------------------------------------------------------------------


def physical_memory_bytes() -> int | None:
    """The machine's physical memory in bytes, or None where the system cannot tell."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or an unknown name
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def memory_limit() -> tuple[int, str]:
    """(the limit in bytes, where it comes from, in words)."""
    text = os.environ.get(ENV_VAR)
    if text is not None:
        try:
            limit = int(text.strip())
        except ValueError:
            limit = 0
        if limit < 1:
            raise ValueError(f"the environment variable {ENV_VAR} must be a positive integer number of bytes; got {text!r}")
        return limit, f"set by {ENV_VAR}"
    physical = physical_memory_bytes()
    share = f"{DEFAULT_FRACTION:.0%}"
    if physical is None:
        return int(DEFAULT_FRACTION * FALLBACK_PHYSICAL_BYTES), (
            f"{share} of an assumed {format_bytes(FALLBACK_PHYSICAL_BYTES)}: this system does not report its "
            f"memory; {ENV_VAR} overrides it"
        )
    return int(DEFAULT_FRACTION * physical), f"{share} of physical memory; {ENV_VAR} overrides it"


def memory_limit_bytes() -> int:
    """The most bytes one call or run may plan to allocate (module doc)."""
    return memory_limit()[0]


def format_bytes(n_bytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n_bytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(value) < 1024 or unit == "EiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_bytes(subject: str, n_bytes: int, what: str) -> None:
    """Raise ValueError unless ``n_bytes`` fits in the memory limit.

    ``subject`` names the argument and its value ("batch_size = 4096"), ``what`` the work and
    its shapes ("sampling 4096 tasks of (N + 1) x (d + 1) = 11 x 11 tokens")."""
    limit, source = memory_limit()
    if n_bytes > limit:
        raise ValueError(
            f"{subject} is too large: {what} would take about {format_bytes(n_bytes)} ({n_bytes} bytes), more "
            f"than the memory limit of {format_bytes(limit)} ({source})"
        )


def open_files_limit() -> int | None:
    """The soft limit on this process's open files (RLIMIT_NOFILE), or None where unknown or unlimited."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


# --- estimates (bytes, from shapes) -----------------------------------------------------------------


def sample_bytes(batch_size: int, n_context: int, d: int, itemsize: int = FLOAT64, *, noise: bool = False,
                 n_distractors: int = 0) -> int:
    """Peak bytes of ``LinearRegressionTask.sample``: the float64 draws (weights (B, d), inputs
    (B, N + 1, d) and the scaled copy of a non-uniform law, labels (B, N + 1), label noise and its
    scaled copy, distractor keys, positions and values), the tokens (B, N + 1, d + 1), and the
    cast copies of tokens, targets and weights when the task's dtype is not float64."""
    b, t, n = batch_size, n_context + 1, n_context
    draws = d + 2 * t * d + t + (2 * t if noise else 0) + (2 * n + n_distractors if n_distractors else 0)
    cast = 0 if itemsize == FLOAT64 else itemsize * b * (t * (d + 1) + 1 + d)
    return FLOAT64 * b * (draws + t * (d + 1)) + cast


def task_sample_bytes(task, batch_size: int) -> int:
    """``sample_bytes`` for a LinearRegressionTask."""
    return sample_bytes(batch_size, task.n_context, task.d, _itemsize(task.dtype),
                        noise=task.noise_std > 0, n_distractors=task.n_distractors)


def lsa_param_count(cfg) -> int:
    """Entries of an LSA's parameters: one weight set per layer (one in all when tied),
    H x D x (2 k + v) + H x v x D each."""
    h, dim, k, v = cfg.n_heads, cfg.d + 1, cfg.key_size, cfg.value_size
    sets = 1 if cfg.tied else cfg.n_layers
    return sets * h * (dim * (2 * k + v) + v * dim)


def init_params_bytes(cfg) -> int:
    """Peak bytes of ``init_params``: every draw in float64 and its cast copy, plus the dict."""
    return lsa_param_count(cfg) * (2 * FLOAT64 + _itemsize(cfg.dtype))


def lsa_pass_bytes(cfg, batch_size: int, n_context: int) -> int:
    """Upper estimate of the NumPy oracle's peak for any one call of the LSA ``cfg`` on
    ``batch_size`` tasks of ``n_context`` context tokens (forward with every row of every layer,
    or loss and gradient, or sensitivity), in ``cfg.dtype``.

    Per layer the forward keeps (numpy_backend._LayerCache) Q (B, H, T, k), K (B, H, N_k, k),
    V (B, H, N_k, v), S (B, H, T, N_k), Z (B, H, T, v) and its output and update (B, T, D); the
    backward of one layer at a time holds dZ, dS, dV, dQ, dK, the tensordot copies of Z, Q, K,
    V, the input-gradient products (B, H, R, D) and (B, H, N_k, D) and a few (B, T, D) arrays;
    add the cast tokens and three copies of the parameters (cast, gradients, zeros)."""
    b, t, dim = batch_size, n_context + 1, cfg.d + 1
    n_k = t if cfg.include_query else n_context
    h, k, v = cfg.n_heads, cfg.key_size, cfg.value_size
    forward = 2 * t * dim + h * (t * k + n_k * k + n_k * v + t * n_k + t * v)
    backward = h * (2 * t * v + 2 * t * n_k + 2 * n_k * v + 2 * t * k + 2 * n_k * k + t * dim + 3 * n_k * dim) + 6 * t * dim
    itemsize = _itemsize(cfg.dtype)
    return itemsize * (b * (cfg.n_layers * forward + backward + t * dim) + 3 * lsa_param_count(cfg))


def lsa_shape_text(cfg, batch_size: int, n_context: int) -> str:
    """The sizes that ``lsa_pass_bytes`` grows with, in words."""
    return (f"{batch_size} tasks of {n_context + 1} x {cfg.d + 1} tokens through {cfg.n_layers} layer(s) x "
            f"{cfg.n_heads} head(s), key_size {cfg.key_size}, value_size {cfg.value_size}, {cfg.dtype}")


def training_step_bytes(task, lsa_cfg, batch_size: int) -> int:
    """One training step: a sampled batch, the model's loss and gradient on it, and the
    optimiser's state (parameters, gradients, two Adam moments)."""
    return (task_sample_bytes(task, batch_size) + lsa_pass_bytes(lsa_cfg, batch_size, task.n_context)
            + 4 * FLOAT64 * lsa_param_count(lsa_cfg))


def evaluation_bytes(task, lsa_cfg, n_tasks: int) -> int:
    """Evaluating a model on ``n_tasks`` validation tasks at once: the batch, the model's pass
    (predictions, sensitivities, every layer's read-out), the GD baselines' per-task arrays and
    the metrics' per-task arrays."""
    n, d = task.n_context, task.d
    return (task_sample_bytes(task, n_tasks) + lsa_pass_bytes(lsa_cfg, n_tasks, n)
            + FLOAT64 * n_tasks * (4 * n + 6 * d + 16))


#: Rough host memory of one run besides its arrays: configs, paths, the run directory's state,
#: up to 100 step records between checkpoints, the progress line (an over-estimate).
RUN_OVERHEAD_BYTES = 256 * 1024


def seeds_bytes(task, lsa_cfg, batch_size: int, n_seeds: int, *, together: bool) -> int:
    """Training ``n_seeds`` runs in lockstep: every run's state (parameters, gradients, two Adam
    moments, in float64 at most) and overhead, and the training steps that are alive at once (all
    of them in one vmapped program when ``together``, else one at a time)."""
    per_run = 4 * FLOAT64 * lsa_param_count(lsa_cfg) + RUN_OVERHEAD_BYTES
    return n_seeds * per_run + (n_seeds if together else 1) * training_step_bytes(task, lsa_cfg, batch_size)


def gdpp_bytes(batch_size: int, n_context: int, d: int) -> int:
    """``baselines.gdpp_predict``: the float64 tokens, and per step the Gram matrices (B, N, N) and
    (B, N), the residuals and the new inputs, labels and query (and their products)."""
    b, n = batch_size, n_context
    return FLOAT64 * b * ((n + 1) * (d + 1) + 2 * n * n + 6 * n * d + 6 * n + 4 * d)


def _itemsize(dtype) -> int:
    return 4 if str(dtype) == "float32" else FLOAT64
