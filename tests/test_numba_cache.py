"""numba kernels are compiled once per machine and loaded from disk after; the first run says so."""
from types import SimpleNamespace

import pytest

numba_backend = pytest.importorskip("iclgd.backends.numba_backend", reason="numba is an optional extra")


def fake_kernel(name, cache_dir):
    return SimpleNamespace(py_func=SimpleNamespace(__name__=name), _cache=SimpleNamespace(cache_path=str(cache_dir)))


def test_a_kernel_without_a_cache_index_is_reported_and_the_backend_says_it_compiles(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(numba_backend, "_entry_kernels", lambda: (fake_kernel("_batch_pass", tmp_path),))
    assert numba_backend.uncached_kernels() == ["_batch_pass"]
    numba_backend.NumbaBackend()
    assert "compiling the numba kernels" in capsys.readouterr().err


def test_a_cached_kernel_is_not_reported_and_the_backend_stays_quiet(tmp_path, monkeypatch, capsys):
    (tmp_path / "numba_backend._batch_pass-255.py311.nbi").write_bytes(b"")
    monkeypatch.setattr(numba_backend, "_entry_kernels", lambda: (fake_kernel("_batch_pass", tmp_path),))
    assert numba_backend.uncached_kernels() == []
    numba_backend.NumbaBackend()
    assert capsys.readouterr().err == ""


def test_every_entry_kernel_caches_to_disk():
    for kernel in numba_backend._entry_kernels():
        assert kernel._cache.cache_path, kernel.py_func.__name__
