"""How numba's OpenMP threads wait, measured: `python benchmarks/omp_wait.py [--repeats 30]`.

For each setting of the environment (libgomp's default spin, OMP_WAIT_POLICY=passive, OMP_WAIT_POLICY=active,
GOMP_SPINCOUNT=10000, which iclgd's numba backend sets unless one of the two is set), and with the
machine quiet or with one busy-loop process competing for a core, a fresh process runs
`iclgd bench --backends numba --layers 1,2 --dtypes float32` and the train-step medians are printed.
Each setting needs its own process: OpenMP reads the variables once, when it loads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    # libgomp's documented default spin (the backend fills in only unset variables, so it is spelled out)
    "libgomp default (GOMP_SPINCOUNT=300000)": {"GOMP_SPINCOUNT": "300000", "OMP_WAIT_POLICY": None},
    "passive": {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": "passive"},
    "active": {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": "active"},
    "GOMP_SPINCOUNT=10000 (iclgd's)": {"GOMP_SPINCOUNT": "10000", "OMP_WAIT_POLICY": None},
}
BUSY_LOOP = "while True: pass"


def train_step_ms(variables: dict, repeats: int) -> dict[int, float]:
    """Median train-step milliseconds per depth, from `iclgd bench` in a process with ``variables``."""
    env = {key: value for key, value in os.environ.items() if key not in variables}
    env |= {key: value for key, value in variables.items() if value is not None}
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "iclgd", "bench", "--backends", "numba", "--layers", "1,2", "--dtypes", "float32",
                        "--repeats", str(repeats), "--out", out], env=env, check=True, capture_output=True)
        rows = json.loads((Path(out) / "bench.json").read_text())["rows"]
    return {row["n_layers"]: row["ms"] for row in rows if row["operation"] == "train step"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    print("| setting | machine | 1 layer, ms | 2 layers, ms |\n|---|---|---|---|")
    for load in ("quiet", "one busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if load != "quiet" else None
        try:
            for name, variables in SETTINGS.items():
                ms = train_step_ms(variables, args.repeats)
                print(f"| {name} | {load} | {ms[1]:.2f} | {ms[2]:.2f} |", flush=True)
        finally:
            if busy is not None:
                busy.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
