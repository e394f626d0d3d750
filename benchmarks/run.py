"""Backend-parity benchmarks, runnable on their own: `python benchmarks/run.py [--out DIR] [--backends ...]`.

The same as `iclgd bench`; iclgd/bench.py says what is measured and how.
"""
import sys

from iclgd.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
