"""The backend choice is measured on the load of the moment, deterministic given its timings,
and never asserts speed (the machine is shared: timings are noise)."""
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iclgd.backends import SPEED_ORDER, available_backends, choice, fastest_backend


def fixed(timings: dict):
    """A measurement that returns ``timings`` for the candidates it is asked about."""
    return lambda pairs: {pair: timings[pair] for pair in pairs}


def installed() -> list[str]:
    return [name for name in available_backends() if choice.installed(name)]


def test_the_smallest_injected_median_wins():
    pairs = choice.candidates(free=1)
    timings = {pair: 1.0 + i for i, pair in enumerate(reversed(pairs))}  # the last candidate is fastest
    chosen = choice.choose_backend(free=1, measure=fixed(timings))
    assert (chosen.backend, chosen.n_threads) == pairs[-1]
    assert [(p.backend, p.n_threads, p.seconds) for p in chosen.probes] == [(*pair, timings[pair]) for pair in pairs]


def test_ties_go_to_the_earlier_candidate():
    pairs = choice.candidates(free=1)
    chosen = choice.choose_backend(free=1, measure=fixed({pair: 2.0 for pair in pairs}))
    assert (chosen.backend, chosen.n_threads) == pairs[0]


@given(st.lists(st.floats(1e-6, 1.0), min_size=8, max_size=8))
def test_the_choice_is_a_function_of_the_timings(values):
    pairs = choice.candidates(free=1)
    timings = dict(zip(pairs, values))
    first = choice.choose_backend(free=1, measure=fixed(timings))
    second = choice.choose_backend(free=1, measure=fixed(timings))
    assert first == second
    assert timings[(first.backend, first.n_threads)] == min(timings.values())


def test_numba_is_a_candidate_at_one_thread_and_at_all_of_its_threads():
    pytest.importorskip("numba")
    counts = [n for name, n in choice.candidates() if name == "numba"]
    assert counts == sorted(set(counts))
    assert counts[0] == 1 and counts[-1] == choice.numba_max_threads()


def test_candidates_leave_out_backends_not_asked_for():
    assert [name for name, _ in choice.candidates(["numpy"])] == ["numpy"]


def test_an_unknown_backend_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        choice.candidates(["numpy", "cuda"])


def test_a_measurement_missing_a_candidate_is_refused():
    with pytest.raises(ValueError, match="no time for candidate"):
        choice.choose_backend(["numpy"], measure=lambda pairs: {})


@given(st.integers(1, 256), st.floats(0, 1000))
def test_free_cores_are_between_one_and_the_usable_cores(cores, busy):
    assert 1 <= choice.free_cores(cores, busy) <= cores


def test_free_cores_are_the_cores_less_the_busy_ones():
    assert choice.free_cores(4, 1.0) == 3 and choice.free_cores(2, 2.0) == 1


def test_free_cores_refuse_a_negative_load():
    with pytest.raises(ValueError, match="busy >= 0"):
        choice.free_cores(2, -1.0)


def test_a_real_probe_returns_an_installed_backend_and_a_thread_count_within_the_cores():
    names = [name for name in ("numpy", "numba") if choice.installed(name)]  # jax's compile is slow; same code path
    chosen = choice.choose_backend(names, batch_size=64, repeats=1, warmup=1)
    assert chosen.backend in installed()
    assert 1 <= chosen.n_threads <= os.cpu_count()
    assert all(p.seconds > 0 for p in chosen.probes)


def test_probing_leaves_numbas_thread_count_as_it_was():
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    choice.interleaved_medians(choice.candidates(["numba"]), batch_size=16, repeats=1, warmup=0)
    assert numba.get_num_threads() == before


def test_fastest_backend_without_measuring_is_the_first_installed_in_the_quiet_order():
    assert fastest_backend() == next(name for name in SPEED_ORDER if choice.installed(name))


def test_fastest_backend_when_measuring_returns_the_measured_choice(monkeypatch):
    monkeypatch.setattr(choice, "choose_backend", lambda: choice.Choice("numpy", 1, ()))
    assert fastest_backend(measure=True) == "numpy"


def test_a_numba_choice_sets_numbas_thread_count():
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    try:
        choice.apply_choice(choice.Choice("numba", 1, ()))
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
