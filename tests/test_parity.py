"""Every installed backend computes what the NumPy oracle computes.

Three kinds of evidence, each failure naming the tensor that differs (tests/parity.py):
  * golden states (tests/golden/*.npz, written by the oracle in float64 by
    tests/golden/make_golden.py), for both model families, the LSA and the transformer: forward
    (every layer or block), predict, loss, every gradient, and the LSA's sensitivity or the
    transformer's per-position loss, of every backend that computes the family, agree with them
    to 1e-10 relative, the oracle's own to 1e-13; and the files are what the script writes now, so
    the oracle cannot change its numbers unnoticed (numba computes the LSA only: it must refuse a
    TransformerConfig with ValueError);
  * hypothesis-drawn configs: each fast backend agrees with the oracle in float64 and in float32,
    on LSAs and, through the same public API, on transformers (float64 1e-9, float32 1e-4);
  * a short training run: each fast backend's trainer ends where the oracle's does.
Tolerances are relative to each tensor's own largest entry (each gradient on its parameter's scale).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from parity import check_all, check_dtypes, check_tensor, tensor_mismatch
from strategies import model_cases, transformer_cases

import iclgd
from iclgd.backends.training import initial_state, trainer_for
from iclgd.config import run_config_from_dict
from iclgd.tokens.interleaved import InterleavedBatch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MAKE_GOLDEN = GOLDEN_DIR / "make_golden.py"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.npz"))
REGENERATE = "python tests/golden/make_golden.py"

#: backend -> the modules its engine needs (a backend whose engine is missing is skipped)
ENGINES = {"numpy": (), "numba": ("numba",), "jax": ("jax", "optax")}
#: backend -> the model families it computes (the golden states of other families are skipped for it)
FAMILIES = {"numpy": ("lsa", "transformer"), "numba": ("lsa",), "jax": ("lsa", "transformer")}
#: config class of each family, as a golden file's config names it (an LSA file's config has no family field)
CONFIGS = {"lsa": iclgd.LSAConfig, "transformer": iclgd.TransformerConfig}
#: relative tolerance against the golden states: the oracle must reproduce its own numbers
GOLDEN_RTOL = {"numpy": 1e-13, "numba": 1e-10, "jax": 1e-10}
#: relative tolerance of a fast backend against the oracle (float32: see assert_agrees_with_the_oracle)
ORACLE_RTOL = {"float64": 1e-10, "float32": 1e-3}
FLOAT32_SLACK = 10.0
#: hypothesis examples per test: jax compiles every drawn shape (~0.5 s each), numba does not
# as many drawn examples as the backend tests had before this suite (jax recompiles per shape: ~1 s each)
EXAMPLES = {"numba": {"float64": 40, "float32": 20}, "jax": {"float64": 18, "float32": 8}}
TRAINING_RTOL = 1e-10
#: golden files are meant to stay small: a transformer of d_model 8 has some 500-900 parameters
MAX_GOLDEN_BYTES = {"lsa": 16_000, "transformer": 32_000}
#: the drawn transformers (tests/strategies.transformer_cases) against the oracle, through the public API;
#: tests/test_jax_transformer.py draws more of them through the jax engine's hooks
TRANSFORMER_RTOL = {"float64": 1e-9, "float32": 1e-4}
TRANSFORMER_EXAMPLES = {"float64": 3, "float32": 2}

oracle = iclgd.get_backend("numpy")


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in ENGINES[name])


def backend_params(names) -> list:
    return [
        pytest.param(name, id=name, marks=pytest.mark.skipif(not installed(name), reason=f"{name} is not installed: pip install 'iclgd[{name}]'"))
        for name in names
    ]


ALL_BACKENDS = backend_params(ENGINES)
FAST_BACKENDS = backend_params(name for name in ENGINES if name != "numpy")


# --- what a backend computes, under the names the failures report ------------------------------


def stage_name(cfg, index: int, n_states: int) -> str:
    """The name of forward's state ``index``: the LSA's tokens after ``index`` layers; the
    transformer's residual stream after the embedding or a block, or its output tokens."""
    if isinstance(cfg, iclgd.LSAConfig):
        return f"layer {index} tokens"
    if index == 0:
        return "residual stream after the embedding"
    return "output tokens" if index == n_states - 1 else f"residual stream after block {index - 1}"


def forward_outputs(backend, cfg, params, tokens) -> dict:
    states = backend.forward(cfg, params, tokens)
    return {stage_name(cfg, index, len(states)): value for index, value in enumerate(states)}


def loss_outputs(backend, cfg, params, batch) -> dict:
    return {"loss": backend.loss(cfg, params, batch), "loss of loss_and_grad": backend.loss_and_grad(cfg, params, batch)[0]}


def gradient_outputs(backend, cfg, params, batch) -> dict:
    return {f"{name} gradient": grad for name, grad in backend.loss_and_grad(cfg, params, batch)[1].items()}


def all_outputs(backend, cfg, params, batch) -> dict:
    """Every output of the backend API on one model and batch."""
    loss, grads = backend.loss_and_grad(cfg, params, batch)
    return {
        **forward_outputs(backend, cfg, params, batch.tokens),
        "predictions": backend.predict(cfg, params, batch.tokens),
        "loss": backend.loss(cfg, params, batch),
        "loss of loss_and_grad": loss,
        **{f"{name} gradient": grad for name, grad in grads.items()},
        "sensitivity": backend.sensitivity(cfg, params, batch.tokens),
    }


def paired(got: dict, expected: dict) -> dict:
    """name -> (got, expected) for every expected name (None where ``got`` lacks it); a name
    that ``got`` has and ``expected`` lacks fails here."""
    extra = sorted(set(got) - set(expected))
    assert not extra, f"unexpected outputs {extra}; expected only {sorted(expected)}"
    return {name: (got.get(name), value) for name, value in expected.items()}


def arrays_of(outputs: dict) -> dict:
    """The outputs that are arrays (the loss is a Python float)."""
    return {name: value for name, value in outputs.items() if not name.startswith("loss")}


# --- golden states -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Golden:
    family: str  # "lsa" or "transformer"
    cfg: iclgd.LSAConfig | iclgd.TransformerConfig
    params: dict
    batch: iclgd.Batch | InterleavedBatch
    outputs: dict  # the oracle's outputs, named as all_outputs (LSA) or transformer_outputs names them

    def expected(self, kind: str) -> dict:
        """The outputs of one kind: "forward" (every state forward returns), "loss" (both losses) or "gradient"."""
        n_states = self.cfg.n_layers + (1 if self.family == "lsa" else 2)  # LSA: the input too; transformer: the output too
        stages = {stage_name(self.cfg, index, n_states) for index in range(n_states)}
        selects = {"forward": lambda n: n in stages, "loss": lambda n: n.startswith("loss"), "gradient": lambda n: n.endswith(" gradient")}
        return {name: value for name, value in self.outputs.items() if selects[kind](name)}


def golden_family(arrays) -> str:
    """The model family a golden file's config names ("lsa" where it names none: the LSA files predate the field)."""
    return json.loads(str(arrays["config"])).get("family", "lsa")


@functools.cache
def load_golden(path: Path) -> Golden:
    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}
    fields = json.loads(str(arrays["config"]))
    family = fields.pop("family", "lsa")
    cfg = CONFIGS[family](**fields)
    params = {key.removeprefix("params/"): value for key, value in arrays.items() if key.startswith("params/")}
    loss = float(arrays["loss"])
    states = sorted((int(key.removeprefix("forward/")), value) for key, value in arrays.items() if key.startswith("forward/"))
    outputs = {
        **{stage_name(cfg, index, len(states)): value for index, value in states},
        "predictions": arrays["predictions"],
        "loss": loss,
        "loss of loss_and_grad": loss,
        **{f"{key.removeprefix('grad/')} gradient": value for key, value in arrays.items() if key.startswith("grad/")},
    }
    if family == "lsa":
        outputs["sensitivity"] = arrays["sensitivity"]
        batch = iclgd.Batch(arrays["tokens"], arrays["targets"], arrays["weights"])
    else:
        outputs["per-position loss"] = arrays["per_position_loss"]
        batch = InterleavedBatch(arrays["tokens"], arrays["targets"], arrays["weights"])
    return Golden(family, cfg, params, batch, outputs)


def golden_files(family: str | None = None) -> list[Path]:
    """The golden files (of ``family`` only, if given)."""
    return [path for path in GOLDEN_FILES if family is None or load_golden(path).family == family]


def golden_params(family: str | None = None):
    return [pytest.param(path, id=path.stem) for path in golden_files(family)]


def golden_backend(name: str, golden: Golden):
    """Backend ``name``, or a skip where it does not compute the golden state's family."""
    if golden.family not in FAMILIES[name]:
        pytest.skip(f"the {name} backend does not compute the {golden.family} (test_numba_refuses_a_transformer_config)")
    return iclgd.get_backend(name)


def test_there_are_golden_states_for_every_model_variant():
    """Tied and untied, one and several layers and heads, include_query, key size != value size."""
    cfgs = [load_golden(path).cfg for path in golden_files("lsa")]
    assert any(c.n_layers == 1 and c.n_heads == 1 for c in cfgs)
    assert any(c.n_layers >= 2 and c.n_heads >= 2 and not c.tied for c in cfgs)
    assert any(c.n_layers >= 3 and c.tied for c in cfgs)
    assert any(c.include_query for c in cfgs)
    assert any(c.key_size != c.value_size for c in cfgs)


def test_there_are_golden_states_for_every_transformer_variant():
    """One block and two; one head and two; softmax attention with LayerNorm and linear attention
    without; with and without the output projection."""
    cfgs = [load_golden(path).cfg for path in golden_files("transformer")]
    assert any(c.n_layers == 1 and c.n_heads == 1 and c.attention == "softmax" and c.layer_norm for c in cfgs)
    assert any(c.n_layers >= 2 and c.n_heads >= 2 and not c.output_projection for c in cfgs)
    assert any(c.attention == "linear" and not c.layer_norm for c in cfgs)
    assert all(isinstance(c, iclgd.TransformerConfig) and c.dtype == "float64" for c in cfgs)


@pytest.mark.parametrize("path", golden_params())
def test_each_golden_file_records_how_it_was_made(path):
    with np.load(path) as stored:
        assert str(stored["generator"]) == "tests/golden/make_golden.py"
        assert str(stored["iclgd_version"]) and str(stored["numpy_version"])
        assert all(stored[key].dtype == np.float64 for key in stored.files if stored[key].dtype.kind == "f")
        family = golden_family(stored)
    assert path.stat().st_size < MAX_GOLDEN_BYTES[family], "golden files are meant to stay small"


@pytest.mark.parametrize("path", golden_params())
@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_forward_reproduces_every_layer_of_the_golden_state(name, path):
    golden = load_golden(path)
    got = forward_outputs(golden_backend(name, golden), golden.cfg, golden.params, golden.batch.tokens)
    check_dtypes(got, "float64")
    check_all(paired(got, golden.expected("forward")), rtol=GOLDEN_RTOL[name])


@pytest.mark.parametrize("path", golden_params())
@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_predictions_reproduce_the_golden_state(name, path):
    golden = load_golden(path)
    got = golden_backend(name, golden).predict(golden.cfg, golden.params, golden.batch.tokens)
    check_tensor("predictions", got, golden.outputs["predictions"], rtol=GOLDEN_RTOL[name], dtype="float64")


@pytest.mark.parametrize("path", golden_params())
@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_loss_reproduces_the_golden_state(name, path):
    golden = load_golden(path)
    got = loss_outputs(golden_backend(name, golden), golden.cfg, golden.params, golden.batch)
    assert all(isinstance(value, float) for value in got.values()), got
    check_all(paired(got, golden.expected("loss")), rtol=GOLDEN_RTOL[name])


@pytest.mark.parametrize("path", golden_params())
@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_every_gradient_reproduces_the_golden_state_on_its_own_scale(name, path):
    golden = load_golden(path)
    got = gradient_outputs(golden_backend(name, golden), golden.cfg, golden.params, golden.batch)
    check_dtypes(got, "float64")
    check_all(paired(got, golden.expected("gradient")), rtol=GOLDEN_RTOL[name])


@pytest.mark.parametrize("path", golden_params("lsa"))
@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_sensitivity_reproduces_the_golden_state(name, path):
    golden = load_golden(path)
    got = golden_backend(name, golden).sensitivity(golden.cfg, golden.params, golden.batch.tokens)
    check_tensor("sensitivity", got, golden.outputs["sensitivity"], rtol=GOLDEN_RTOL[name], dtype="float64")


@pytest.mark.parametrize("path", golden_params("transformer"))
@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_per_position_loss_reproduces_the_golden_state(name, path):
    golden = load_golden(path)
    got = golden_backend(name, golden).per_position_loss(golden.cfg, golden.params, golden.batch)
    check_tensor("per-position loss", got, golden.outputs["per-position loss"], rtol=GOLDEN_RTOL[name], dtype="float64")


def test_numba_refuses_a_transformer_config():
    """numba computes the LSA only: every entry of its API refuses a TransformerConfig with ValueError."""
    if not installed("numba"):
        pytest.skip("numba is not installed: pip install 'iclgd[numba]'")
    backend = iclgd.get_backend("numba")
    golden = load_golden(golden_files("transformer")[0])
    cfg, params, batch = golden.cfg, golden.params, golden.batch
    calls = {
        "forward": lambda: backend.forward(cfg, params, batch.tokens),
        "predict": lambda: backend.predict(cfg, params, batch.tokens),
        "loss": lambda: backend.loss(cfg, params, batch),
        "per_position_loss": lambda: backend.per_position_loss(cfg, params, batch),
        "loss_and_grad": lambda: backend.loss_and_grad(cfg, params, batch),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match="TransformerConfig"):
            call()


def test_the_golden_files_are_what_make_golden_writes_now(tmp_path):
    """Regenerates every file in a temporary directory with the script itself and compares:
    the same cases and keys, the same config, inputs equal exactly, the oracle's outputs to
    1e-13 relative (round-off of another BLAS; on one machine they are identical)."""
    result = subprocess.run([sys.executable, str(MAKE_GOLDEN), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    how = (f"If the change is intended (the oracle's numbers or make_golden's cases), regenerate the golden states with `{REGENERATE}` "
           "(from the repository root) and commit tests/golden/*.npz.")
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == [p.name for p in GOLDEN_FILES], f"the set of golden cases changed. {how}"
    failures = []
    for path in GOLDEN_FILES:
        with np.load(path) as stored, np.load(tmp_path / path.name) as fresh:
            if set(stored.files) != set(fresh.files):
                failures.append(f"{path.name}: keys {sorted(set(stored.files) ^ set(fresh.files))} are in only one of the two")
                continue
            if str(stored["config"]) != str(fresh["config"]):
                failures.append(f"{path.name}: config {fresh['config']} now, {stored['config']} stored")
            for key in stored.files:
                if stored[key].dtype.kind != "f":
                    continue
                inputs = ("tokens", "targets", "weights") + (("forward/0",) if golden_family(stored) == "lsa" else ())
                exact = key.startswith("params/") or key in inputs
                message = tensor_mismatch(f"{path.name} {key}", fresh[key], stored[key], rtol=0.0 if exact else 1e-13)
                if message:
                    failures.append(message + (" (an input: make_golden draws other numbers now)" if exact else ""))
    if failures:
        raise AssertionError("the golden files differ from what tests/golden/make_golden.py writes now "
                             "(got: written now, expected: stored):\n  " + "\n  ".join(failures) + f"\n{how}")


# --- hypothesis-drawn configs --------------------------------------------------------------------


def exact_float64(cfg, params, batch):
    """The same model and batch in float64, on the float32-rounded values the float32 run sees,
    so that the float64 oracle computes the exact answer to the float32 run's inputs."""
    def rounded(array):
        return np.asarray(array).astype(cfg.dtype).astype(np.float64)

    return (dataclasses.replace(cfg, dtype="float64"), {k: rounded(v) for k, v in params.items()},
            iclgd.Batch(rounded(batch.tokens), rounded(batch.targets), batch.weights))


def assert_agrees_with_the_oracle(name: str, dtype: str, max_layers: int) -> None:
    """Every output of backend ``name`` on drawn configs, in ``dtype``:
    float64: equal to the oracle's to ORACLE_RTOL["float64"] relative;
    float32: equal to the exact answer (the float64 oracle on the same float32 inputs) to
        ORACLE_RTOL["float32"] relative, or else at most FLOAT32_SLACK times as far from it as
        the float32 oracle: round-off in a tensor that comes out much smaller than the terms
        summed into it (a cancellation) is not bounded by its own scale, but then the oracle
        suffers it too."""
    backend = iclgd.get_backend(name)

    @settings(max_examples=EXAMPLES[name][dtype], deadline=None)
    @given(model_cases(dtype=dtype, max_layers=max_layers))
    def agrees(case):
        cfg, params, batch = case
        got, expected = all_outputs(backend, cfg, params, batch), all_outputs(oracle, cfg, params, batch)
        check_dtypes(arrays_of(got), dtype)
        if dtype == "float64":
            check_all(paired(got, expected), rtol=ORACLE_RTOL[dtype])
            return
        exact = all_outputs(oracle, *exact_float64(cfg, params, batch))
        oracle_error = {key: np.max(np.abs(np.asarray(expected[key], np.float64) - exact[key])) for key in exact}
        results = paired(got, exact)
        check_all({key: (ours, truth, FLOAT32_SLACK * oracle_error[key]) for key, (ours, truth) in results.items()}, rtol=ORACLE_RTOL[dtype])

    agrees()


@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_every_output_agrees_with_the_oracle_in_float64_on_drawn_configs(name):
    assert_agrees_with_the_oracle(name, "float64", max_layers=3)


@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_every_output_agrees_with_the_oracle_in_float32_on_drawn_configs(name):
    """Two layers at most: three layers of these weights can overflow float32 in every backend."""
    assert_agrees_with_the_oracle(name, "float32", max_layers=2)


#: The criterion the backend tests held float32 to before this suite: 1e-4 of each output's
#: largest entry against the float32 oracle (the loss: of max(1, loss); the gradients: of the
#: largest gradient entry over the whole model).  Kept beside the exact-answer check above, so
#: that no float32 test is looser than it was.
FLOAT32_AGAINST_ORACLE = 1e-4


@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_float32_outputs_agree_with_the_float32_oracle_as_before(name):
    backend = iclgd.get_backend(name)

    @settings(max_examples=EXAMPLES[name]["float32"], deadline=None)
    @given(model_cases(dtype="float32", max_layers=2, max_batch=9))
    def agrees(case):
        cfg, params, batch = case
        tol = FLOAT32_AGAINST_ORACLE
        ours, truth = all_outputs(backend, cfg, params, batch), all_outputs(oracle, cfg, params, batch)
        grads = [k for k in truth if k.endswith(" gradient")]
        losses = [k for k in truth if k.startswith("loss")]
        for key in truth:
            if key not in grads and key not in losses:
                check_tensor(key, ours[key], truth[key], rtol=tol, atol_scale=1e-30)
        for key in losses:
            assert abs(ours[key] - truth[key]) <= tol * max(1.0, truth[key]), key
        largest = max(float(np.max(np.abs(truth[k]))) for k in grads)
        worst = max(float(np.max(np.abs(np.asarray(ours[k], np.float64) - truth[k]))) for k in grads)
        assert worst <= tol * max(largest, 1e-30), f"gradients: max error {worst:.3g} > {tol} x largest entry {largest:.3g}"

    agrees()


# --- deep and wide LSAs: every path of the numba kernel -------------------------------------------

#: (config, N, B): up to five layers and three heads, tied or not, the query attended or not;
#: with 4 H < D (numba's rank-2H path for layer K - 2) and without, and key size != value size
DEEP_AND_WIDE = [
    (iclgd.LSAConfig(d=4, n_layers=5, n_heads=3, include_query=True), 5, 9),
    (iclgd.LSAConfig(d=6, n_layers=5, n_heads=1, tied=True), 7, 70),
    (iclgd.LSAConfig(d=9, n_layers=4, n_heads=2, key_size=4, value_size=7, include_query=True), 4, 40),
    (iclgd.LSAConfig(d=12, n_layers=2, n_heads=3, tied=True, include_query=True), 3, 5),
]


def deep_and_wide_params():
    return [pytest.param(cfg, n, b, id=f"{cfg.n_layers}layers-{cfg.n_heads}heads-d{cfg.d}{'-tied' if cfg.tied else ''}"
                                          f"{'-query' if cfg.include_query else ''}") for cfg, n, b in DEEP_AND_WIDE]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg, n_context, batch_size", deep_and_wide_params())
@pytest.mark.parametrize("name", backend_params(["numba"]))
def test_every_output_of_deep_and_wide_models_agrees_with_the_oracle(name, cfg, n_context, batch_size, dtype):
    """As test_every_output_agrees_with_the_oracle_in_*_on_drawn_configs (float64 to 1e-9 of each
    tensor's scale; float32 to 1e-4 of the exact answer or FLOAT32_SLACK times the float32
    oracle's own error), on models deeper and wider than the drawn ones; a failure names the tensor."""
    cfg = dataclasses.replace(cfg, dtype=dtype)
    rng = np.random.default_rng(cfg.n_layers * 10 + cfg.n_heads)
    std = 0.3 if cfg.n_layers <= 2 else 0.1  # deeper models grow like |tokens|^(3^K): smaller weights keep float32 finite
    params = {k: (std * rng.standard_normal(v)).astype(dtype) for k, v in iclgd.param_shapes(cfg).items()}
    batch = iclgd.LinearRegressionTask(d=cfg.d, n_context=n_context).sample(batch_size, 1)
    got, expected = all_outputs(iclgd.get_backend(name), cfg, params, batch), all_outputs(oracle, cfg, params, batch)
    check_dtypes(arrays_of(got), dtype)
    if dtype == "float64":
        check_all(paired(got, expected), rtol=1e-9)
        return
    exact = all_outputs(oracle, *exact_float64(cfg, params, batch))
    oracle_error = {key: np.max(np.abs(np.asarray(expected[key], np.float64) - exact[key])) for key in exact}
    check_all({key: (ours, truth, FLOAT32_SLACK * oracle_error[key]) for key, (ours, truth) in paired(got, exact).items()},
              rtol=ORACLE_RTOL[dtype])


# --- hypothesis-drawn transformers ----------------------------------------------------------------


TRANSFORMER_BACKENDS = backend_params(name for name in ENGINES if name != "numpy" and "transformer" in FAMILIES[name])


def transformer_outputs(backend, cfg, params, batch) -> dict:
    """Every output of the backend API on one transformer and batch (inputs validated by the API)."""
    loss, grads = backend.loss_and_grad(cfg, params, batch)
    return {
        **forward_outputs(backend, cfg, params, batch.tokens),
        "predictions": backend.predict(cfg, params, batch.tokens),
        "per-position loss": backend.per_position_loss(cfg, params, batch),
        "loss": backend.loss(cfg, params, batch),
        "loss of loss_and_grad": loss,
        **{f"{name} gradient": grad for name, grad in grads.items()},
    }


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", TRANSFORMER_BACKENDS)
def test_every_transformer_output_agrees_with_the_oracle_on_drawn_configs(name, dtype):
    """Forward, predict, per_position_loss, loss and loss_and_grad of the public API on drawn
    transformers: float64 to 1e-9 of each tensor's largest entry; float32 to 1e-4 of it against
    the float32 oracle, or else to twice the float32 oracle's own distance from the exact answer
    (the float64 oracle on the same float32-rounded inputs: a sum that cancels, such as a bias
    gradient at a large loss, has round-off above 1e-4 of its own scale in every engine).  Two
    blocks at most in float32: three blocks of these weights can overflow float32."""
    backend = iclgd.get_backend(name)
    bounds = {} if dtype == "float64" else {"max_layers": 2}

    @settings(max_examples=TRANSFORMER_EXAMPLES[dtype], deadline=None)
    @given(transformer_cases(dtype=dtype, **bounds))
    def agrees(case):
        cfg, params, tokens, targets = case
        batch = InterleavedBatch(tokens, targets, np.zeros((tokens.shape[0], cfg.d)))
        got, expected = transformer_outputs(backend, cfg, params, batch), transformer_outputs(oracle, cfg, params, batch)
        check_dtypes(arrays_of(got), dtype)
        if dtype == "float64":
            check_all(paired(got, expected), rtol=TRANSFORMER_RTOL[dtype])
            return
        def rounded(array):
            return np.asarray(array).astype(np.float32).astype(np.float64)

        batch64 = InterleavedBatch(rounded(tokens), rounded(targets), batch.weights)
        exact = transformer_outputs(oracle, dataclasses.replace(cfg, dtype="float64"), {k: rounded(v) for k, v in params.items()}, batch64)
        own_error = {key: float(np.max(np.abs(np.asarray(expected[key], np.float64) - exact[key]), initial=0.0)) for key in exact}
        check_all({key: (ours, truth, 2.0 * own_error[key]) for key, (ours, truth) in paired(got, expected).items()}, rtol=TRANSFORMER_RTOL[dtype])

    agrees()


# --- training ------------------------------------------------------------------------------------


def tiny_run(backend: str):
    return run_config_from_dict({
        "task": {"d": 3, "n_context": 5},
        "model": {"n_layers": 2, "n_heads": 2},
        "train": {"steps": 5, "batch_size": 16, "lr": 0.01, "seed": 3, "init_scale": 0.5, "clip_norm": 1.0, "backend": backend},
    })


@pytest.mark.parametrize("name", FAST_BACKENDS)
def test_five_training_steps_end_where_the_oracles_end(name):
    """Same host data stream (sampler "numpy"), so params, Adam's moments and every step's loss agree."""
    config = tiny_run(name)
    state, records = trainer_for(iclgd.get_backend(name), config).advance(initial_state(config), 5)
    truth, true_records = trainer_for(oracle, tiny_run("numpy")).advance(initial_state(tiny_run("numpy")), 5)
    assert state.step == truth.step == 5 and [r.step for r in records] == [r.step for r in true_records]
    results = {f"{key} after 5 steps": (state.params[key], truth.params[key]) for key in truth.params}
    results |= {f"Adam m of {key}": (state.adam.m[key], truth.adam.m[key]) for key in truth.params}
    results |= {f"Adam v of {key}": (state.adam.v[key], truth.adam.v[key]) for key in truth.params}
    results |= {f"loss at step {r.step}": (r.loss, t.loss) for r, t in zip(records, true_records)}
    check_all(results, rtol=TRAINING_RTOL)


# --- the suite covers every backend, and its measuring instrument works ---------------------------


def test_the_suite_covers_every_backend_iclgd_knows():
    assert set(ENGINES) == set(iclgd.available_backends()) == set(FAMILIES)


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_the_suite_knows_which_families_each_backend_computes(name):
    """FAMILIES (which golden states a backend is held to) is what the backend declares, so a
    backend that gains the transformer is held to its golden states at once."""
    declared = {family for family, config in CONFIGS.items() if issubclass(config, iclgd.get_backend(name).families)}
    assert declared == set(FAMILIES[name])


def test_a_failure_names_the_tensor_its_shape_errors_worst_index_and_tolerance():
    expected = np.arange(6.0).reshape(2, 3)
    got = expected.copy()
    got[1, 2] += 0.5
    with pytest.raises(AssertionError) as failure:
        check_tensor("layer1.w_q gradient", got, expected, rtol=1e-10)
    message = str(failure.value)
    for part in ("layer1.w_q gradient", "shape (2, 3)", "max abs error 0.5", "index (1, 2)", "relative error 0.1", "tolerance 5e-10"):
        assert part in message, (part, message)


def test_gradients_are_judged_on_their_own_scale():
    """An error that is tiny next to the largest gradient of the model still fails a small parameter."""
    big, small = np.full(3, 1e6), np.full(3, 1e-3)
    check_all({"big gradient": (big, big), "small gradient": (small * (1 + 1e-12), small)}, rtol=1e-10)
    with pytest.raises(AssertionError, match="small gradient"):
        check_all({"big gradient": (big, big), "small gradient": (small + 1e-6, small)}, rtol=1e-10)


def test_check_all_reports_every_failing_tensor_in_one_message():
    ok, bad = np.ones(2), np.ones(2) * 2
    with pytest.raises(AssertionError) as failure:
        check_all({"a": (bad, ok), "b": (ok, ok), "c": (ok[:1], ok), "d": (np.array([np.nan, 1.0]), ok), "e": (None, ok)}, rtol=1e-10)
    message = str(failure.value)
    assert message.startswith("4 of 5 tensors differ")
    for part in ("a: shape (2,)", "c: shape (1,), expected shape (2,)", "d: shape (2,), max abs error inf at index (0,)", "e: missing"):
        assert part in message, (part, message)
    assert "b:" not in message


def test_atol_scale_is_a_floor_on_the_scale_of_an_all_zero_tensor():
    check_tensor("zero gradient", np.full(2, 1e-20), np.zeros(2), rtol=1e-10, atol_scale=1e-9)
    with pytest.raises(AssertionError, match="zero gradient"):
        check_tensor("zero gradient", np.full(2, 1e-20), np.zeros(2), rtol=1e-10)
