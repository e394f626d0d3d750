"""Where a result came from: the code, the software, the machine and the command that made it.

``provenance(backend)`` is stored in every `iclgd reproduce` run's results.json, so that a number
can be traced to the commit and the environment that produced it.  Nothing here can fail a run:
whatever cannot be found out (no git, not a checkout, a package not installed) is left out or null.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

#: the packages whose versions can change a number (those installed are recorded)
PACKAGES = ("numpy", "numba", "jax", "optax", "matplotlib")
GIT_TIMEOUT_S = 5.0


def git_commit(directory: str | Path | None = None) -> str | None:
    """The commit checked out where ``directory`` is (default: iclgd's own source folder), or
    None when that is not a git checkout, git is missing or does not answer in time."""
    directory = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """name -> version of each of ``names`` that is installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def machine() -> dict:
    """The operating system, processor and number of CPU cores."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def provenance(backend: str) -> dict:
    """Everything results.json records about how it was made (module doc); ``backend`` is the
    name of the backend that computed the run."""
    from iclgd import __version__

    return {
        "iclgd_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "backend": backend,
        "command_line": list(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
