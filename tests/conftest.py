import sys
from pathlib import Path

# make tests/strategies.py importable as `strategies` however pytest is invoked
sys.path.insert(0, str(Path(__file__).parent))
