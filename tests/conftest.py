import functools
import os
import sys
from pathlib import Path

from hypothesis import settings

# make tests/strategies.py importable as `strategies` however pytest is invoked
sys.path.insert(0, str(Path(__file__).parent))

# Hypothesis profiles.  "ci" (the default) is reproducible: derandomize=True draws the same
# examples on every run (a fixed seed), deadline=None because timings on a shared machine are
# noise, and print_blob=True prints the blob that replays a failing example.  "thorough" draws
# 1000 fresh random examples per property (tests that fix max_examples keep their own number):
#     HYPOTHESIS_PROFILE=thorough python -m pytest -q
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=1000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- numba's kernels: compiled once per test session, in the background -------------------------
# numba compiles a kernel on first use and caches it on disk (iclgd.backends.numba_warmup).  On a
# fresh install every pytest worker, and every subprocess a walkthrough test starts, would
# compile the same kernels (two minutes of CPU each).  So the first process (xdist's controller,
# or the only one) starts one warm-up process when the cache is empty; the tests that may reach a
# numba kernel run last and wait for it; the others run meanwhile.  One process only: numba's
# cache has no lock (an index is read, extended and rewritten), so two processes compiling the
# same kernel at once can lose or mix entries; a test that may use numba must wait.

WARMUP_MARKER = "ICLGD_TEST_NUMBA_WARMUP_DONE"  # environment: the file the warm-up writes when it ends
WARMUP_TIMEOUT_S = 900
#: modules that run experiments, the CLI or subprocesses on the fastest installed backend
NUMBA_BY_DEFAULT = ("test_backend_choice", "test_bench", "test_cli", "test_guards", "test_llc_cli", "test_philox_training",
                    "test_reference", "test_reference_multi_layer", "test_numba_backend", "test_numba_cache",
                    "test_numba_philox")


@functools.lru_cache(maxsize=None)
def _mentions_numba(path: Path) -> bool:
    return "numba" in path.read_text(encoding="utf-8")


def may_run_numba(item) -> bool:
    """A test of a module that names numba, or that runs experiments, the CLI or walkthroughs."""
    module = item.path.stem
    return module in NUMBA_BY_DEFAULT or module.startswith("test_reproduce") or _mentions_numba(item.path)


def _numba_uncached() -> bool:
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        return False
    from iclgd.backends.numba_backend import uncached_kernels

    return bool(uncached_kernels())


def pytest_configure(config):
    if hasattr(config, "workerinput") or WARMUP_MARKER in os.environ or not _numba_uncached():
        return
    import subprocess
    import tempfile

    marker = Path(tempfile.mkdtemp(prefix="iclgd-numba-warmup-")) / "done"
    script = ("import pathlib, sys\ntry:\n    from iclgd.backends.numba_warmup import compile_kernels\n"
              "    compile_kernels()\nfinally:\n    pathlib.Path(sys.argv[1]).write_text('done')\n")
    config._numba_warmup = subprocess.Popen([sys.executable, "-c", script, str(marker)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ[WARMUP_MARKER] = str(marker)


def pytest_unconfigure(config):
    warmup = getattr(config, "_numba_warmup", None)
    if warmup is not None and warmup.poll() is None:  # the session ended first: the next one compiles
        warmup.terminate()
        warmup.wait()


def pytest_collection_modifyitems(config, items):
    items.sort(key=may_run_numba)  # stable: the numba tests last, each group in its own order


def pytest_runtest_setup(item):
    marker = os.environ.get(WARMUP_MARKER)
    if marker and may_run_numba(item):
        import time

        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while not Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
