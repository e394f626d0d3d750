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
